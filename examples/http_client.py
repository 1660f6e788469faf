"""Every modality from Python over HTTP, with nothing but `httpx`.

    GENSERVE_URL=http://127.0.0.1:8000 GENSERVE_API_KEY=<key> python examples/http_client.py

Writes cat.png, speech.wav, clip.mp4 and chair.glb into the current directory.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import httpx


def client() -> httpx.Client:
    return httpx.Client(base_url=os.environ.get("GENSERVE_URL", "http://127.0.0.1:8000"),
                        headers={"Authorization": f"Key {os.environ['GENSERVE_API_KEY']}"},
                        timeout=600)


def image(c: httpx.Client, out: Path) -> Path:
    body = c.post("/generate", json={"prompt": "A cat with a hat", "height": 64, "width": 64,
                                     "num_inference_steps": 10, "is_ensemble": True}).json()
    png = base64.b64decode(body["images"][0]["url"].split(",", 1)[1])
    (out / "cat.png").write_bytes(png)
    return out / "cat.png"


def chat(c: httpx.Client) -> str:
    answer = c.post("/v1/chat", json={"messages": [{"role": "user", "content": "Hi!"}],
                                      "max_new_tokens": 16}).json()
    # Streaming: Server-Sent Events, one `data: {"text": ...}` per delta.
    streamed = []
    with c.stream("POST", "/v1/chat", json={"prompt": "Hi!", "max_new_tokens": 16,
                                            "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and '"text"' in line:
                streamed.append(json.loads(line[6:])["text"])
    return answer["text"] + " | " + "".join(streamed)


def speech(c: httpx.Client, out: Path) -> Path:
    r = c.post("/v1/tts", json={"text": "Hello there", "voice_preset": "v2/en_speaker_0"})
    (out / "speech.wav").write_bytes(r.raise_for_status().content)
    return out / "speech.wav"


def video(c: httpx.Client, first_frame: Path, out: Path) -> Path:
    data = base64.b64encode(first_frame.read_bytes()).decode()
    r = c.post("/v1/image-to-video", json={"image": data, "width": 64, "height": 64,
                                           "num_frames": 8, "num_inference_steps": 2})
    (out / "clip.mp4").write_bytes(r.raise_for_status().content)
    return out / "clip.mp4"


def mesh(c: httpx.Client, out: Path) -> Path:
    r = c.post("/v1/text-to-3d", json={"prompt": "a chair", "format": "glb", "frame_size": 32,
                                       "num_inference_steps": 4})
    (out / "chair.glb").write_bytes(r.raise_for_status().content)
    return out / "chair.glb"


def main(out: Path = Path(".")) -> dict[str, Path | str]:
    with client() as c:
        png = image(c, out)
        return {"image": png, "chat": chat(c), "speech": speech(c, out),
                "video": video(c, png, out), "mesh": mesh(c, out)}


if __name__ == "__main__":
    for name, result in main().items():
        print(f"{name:7s} {result}")

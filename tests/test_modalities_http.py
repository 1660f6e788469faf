"""Every non-image modality end to end over HTTP through Ray Serve (tiny models): LLM chat
(native SSE and the OpenAI API through the `openai` package), text-to-speech, video, 3D."""

from __future__ import annotations

import concurrent.futures as cf
import io
import json
import wave

import numpy as np
import pytest
from ray import serve

from tests.conftest import API_KEY
from tests.util import b64_png

CHAT = {"messages": [{"role": "user", "content": "hello there"}], "max_new_tokens": 12,
        "do_sample": False}


def sse_events(text: str) -> list[tuple[str | None, str]]:
    events = []
    for block in text.strip().split("\n\n"):
        event, data = None, []
        for line in block.splitlines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        events.append((event, "\n".join(data)))
    return events


# --- LLM: native ------------------------------------------------------------------------

def test_chat_answers_with_only_the_new_message(client):
    r = client.post("/v1/chat", json=CHAT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body["text"], str) and "<|assistant|>" not in body["text"]
    assert body["finish_reason"] in ("stop", "length")
    assert 0 < body["usage"]["completion_tokens"] <= 12
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    again = client.post("/v1/chat", json=CHAT).json()
    assert (again["text"], again["usage"]) == (body["text"], body["usage"])  # greedy: deterministic


def test_chat_prompt_and_system_prompt_form(client):
    r = client.post("/v1/chat", json={"prompt": "hi", "system_prompt": "be brief",
                                      "max_new_tokens": 5, "seed": 3, "temperature": 0.9})
    assert r.status_code == 200, r.text
    again = client.post("/v1/chat", json={"prompt": "hi", "system_prompt": "be brief",
                                          "max_new_tokens": 5, "seed": 3, "temperature": 0.9})
    assert r.json()["text"] == again.json()["text"] and r.json()["seed"] == 3


def test_chat_streams_server_sent_events(client):
    whole = client.post("/v1/chat", json=CHAT).json()
    r = client.post("/v1/chat", json={**CHAT, "stream": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    deltas = [json.loads(d)["text"] for e, d in events if e is None]
    done = [json.loads(d) for e, d in events if e == "done"]
    assert "".join(deltas) == whole["text"]
    assert len(done) == 1 and done[0]["usage"] == whole["usage"]


def test_concurrent_chats_are_batched_and_each_gets_its_own_answer(client):
    prompts = [f"question number {i}" for i in range(4)]
    bodies = [{**CHAT, "messages": [{"role": "user", "content": p}]} for p in prompts]
    alone = [client.post("/v1/chat", json=b).json()["text"] for b in bodies]
    llm = serve.get_deployment_handle("LLMChat", app_name="genserve")
    before = len(llm.batch_stats.remote().result()["batch_sizes"])
    with cf.ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda b: client.post("/v1/chat", json=b).json()["text"], bodies))
    sizes = llm.batch_stats.remote().result()["batch_sizes"][before:]
    assert together == alone  # nobody got someone else's answer
    assert max(sizes) > 1 and sum(sizes) == 4  # merged into fewer forward batches


# --- LLM: OpenAI-compatible --------------------------------------------------------------

@pytest.fixture(scope="module")
def openai_client(app_url):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=f"{app_url}/v1", api_key=API_KEY, max_retries=0)


def test_openai_models_and_completion(openai_client, client):
    models = [m.id for m in openai_client.models.list()]
    assert models == ["TinyLlama/TinyLlama-1.1B-Chat-v1.0"]
    completion = openai_client.chat.completions.create(
        model=models[0], messages=CHAT["messages"], max_tokens=12, temperature=0)
    native = client.post("/v1/chat", json=CHAT).json()
    assert completion.choices[0].message.content == native["text"]
    assert completion.choices[0].finish_reason == native["finish_reason"]
    assert completion.usage.completion_tokens == native["usage"]["completion_tokens"]


def test_openai_streaming(openai_client, client):
    stream = openai_client.chat.completions.create(
        model="TinyLlama/TinyLlama-1.1B-Chat-v1.0", messages=CHAT["messages"], max_tokens=12,
        temperature=0, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == client.post("/v1/chat", json=CHAT).json()["text"]
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_openai_unknown_model_is_404(openai_client):
    import openai

    with pytest.raises(openai.NotFoundError):
        openai_client.chat.completions.create(model="gpt-9", messages=CHAT["messages"])


# --- Text-to-speech ---------------------------------------------------------------------

def test_tts_returns_wav(client):
    r = client.post("/v1/tts", json={"text": "hello world", "seed": 1})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(r.content)) as wav:
        assert wav.getsampwidth() == 2 and wav.getnchannels() == 1
        assert wav.getframerate() == 24000 and wav.getnframes() > 0
    assert client.post("/v1/tts", json={"text": "hello world", "seed": 1}).content == r.content


def test_tts_json_file(client):
    r = client.post("/v1/tts", json={"text": "hello", "response_format": "json"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["audio"]["content_type"] == "audio/wav"
    assert body["audio"]["url"].startswith("data:audio/wav;base64,")
    assert body["sample_rate"] == 24000 and body["duration_s"] > 0


# --- Video ------------------------------------------------------------------------------

VIDEO = {"width": 64, "height": 64, "num_frames": 3, "fps": 6, "num_inference_steps": 2,
         "decode_chunk_size": 2}


def _video_replicas() -> int:
    status = serve.status().applications["genserve"].deployments["ImageToVideo"]
    return status.replica_states.get("RUNNING", 0)


def test_video_scales_up_from_zero_and_returns_mp4(client):
    import av

    assert _video_replicas() == 0  # scale-to-zero: nothing loaded until the first request
    image = b64_png(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    r = client.post("/v1/image-to-video", json={**VIDEO, "image": image})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "video/mp4"
    assert _video_replicas() == 1
    with av.open(io.BytesIO(r.content)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.width, stream.height) == (64, 64) and stream.average_rate == 6
        assert sum(1 for _ in container.decode(stream)) == 3
    again = client.post("/v1/image-to-video", json={**VIDEO, "image": image})
    assert again.content == r.content  # same seed, same video


def test_video_from_an_image_url(client, image_server):
    r = client.post("/v1/image-to-video", json={**VIDEO, "image": f"http://{image_server}/frame.png",
                                                "response_format": "json"})
    assert r.status_code == 200, r.text
    assert r.json()["num_frames"] == 3
    bad = client.post("/v1/image-to-video", json={**VIDEO, "image": f"http://{image_server}/notes.txt"})
    assert bad.status_code == 422 and "image" in bad.json()["detail"]


def test_video_url_into_the_cluster_is_refused(client, app_url):
    # The Serve HTTP port itself: loopback, not allow-listed.
    port = app_url.rsplit(":", 1)[1]
    for url in (f"http://127.0.0.1:{port}/healthz", f"http://[::1]:{port}/", "http://localhost:8265/api/jobs/"):
        r = client.post("/v1/image-to-video", json={**VIDEO, "image": url})
        assert r.status_code == 422 and "non-public" in r.json()["detail"], r.text


def test_text_to_video_composes_sdxl_and_svd(client):
    r = client.post("/v1/text-to-video", json={**VIDEO, "prompt": "a cat", "seed": 5,
                                               "image_num_inference_steps": 2,
                                               "response_format": "json"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["video"]["content_type"] == "video/mp4" and body["num_frames"] == 3
    assert {"base", "video"} <= set(body["timings"])


# --- 3D ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["obj", "glb", "ply"])
def test_text_to_3d_mesh_loads_back(client, fmt):
    import trimesh

    r = client.post("/v1/text-to-3d", json={"prompt": "a chair", "num_inference_steps": 2,
                                            "frame_size": 16, "format": fmt,
                                            "response_format": "json"})
    assert r.status_code == 200, r.text
    body = r.json()
    import base64

    data = base64.b64decode(body["mesh"]["url"].split(",", 1)[1])
    mesh = trimesh.load(io.BytesIO(data), file_type=fmt, force="mesh")
    assert len(mesh.vertices) == body["num_vertices"] > 0
    assert len(mesh.faces) == body["num_faces"] > 0


def test_text_to_3d_binary_download(client):
    r = client.post("/v1/text-to-3d", json={"prompt": "a chair", "num_inference_steps": 2,
                                            "frame_size": 16, "format": "glb"})
    assert r.status_code == 200 and r.headers["content-type"] == "model/gltf-binary"
    assert r.content[:4] == b"glTF"


# --- Bad inputs across modalities: 4xx naming the field, never 5xx ------------------------

BAD = [
    ("/v1/chat", {"messages": []}, "messages"),
    ("/v1/chat", {"messages": [{"role": "robot", "content": "x"}]}, "role"),
    ("/v1/chat", {"messages": [{"role": "user", "content": ""}]}, "content"),
    ("/v1/chat", {"prompt": "hi", "max_new_tokens": 100000}, "max_new_tokens"),
    ("/v1/chat", {"messages": "hello"}, "messages"),
    ("/v1/tts", {"text": ""}, "text"),
    ("/v1/tts", {"text": "hi", "voice_preset": "v2/xx_nobody_9"}, "voice_preset"),
    ("/v1/image-to-video", {"image": "aGVsbG8=", "num_frames": 3}, "image"),
    ("/v1/image-to-video", {"image": b64_png(np.zeros((8, 8, 3), np.uint8)), "num_frames": 0},
     "num_frames"),
    ("/v1/text-to-3d", {"prompt": "x", "format": "fbx"}, "format"),
    ("/v1/text-to-3d", {"prompt": "", "format": "obj"}, "prompt"),
]


@pytest.mark.parametrize("path,body,field", BAD, ids=[f"{p}-{f}" for p, _, f in BAD])
def test_bad_inputs_name_the_field(client, path, body, field):
    r = client.post(path, json=body)
    assert 400 <= r.status_code < 500, r.text
    assert field in r.text, r.text


def test_readme_http_example_runs(app_url, tmp_path, monkeypatch):
    import importlib.util
    from pathlib import Path

    monkeypatch.setenv("GENSERVE_URL", app_url)
    monkeypatch.setenv("GENSERVE_API_KEY", API_KEY)
    path = Path(__file__).resolve().parent.parent / "examples" / "http_client.py"
    spec = importlib.util.spec_from_file_location("http_client", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(tmp_path)
    assert results["image"].read_bytes()[:4] == b"\x89PNG"
    assert results["speech"].read_bytes()[:4] == b"RIFF"
    assert results["video"].read_bytes()[4:8] == b"ftyp"
    assert results["mesh"].read_bytes()[:4] == b"glTF"
    assert " | " in results["chat"]

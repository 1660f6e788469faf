"""Bad requests get a 4xx that names the field, never a 5xx."""

from __future__ import annotations

import base64
import time

import pytest

from tests.conftest import MAX_BODY
from tests.util import tiny_request

CASES = [
    ("width not a multiple of 8", {"width": 1001}, "width", "multiple of 8"),
    ("zero steps", {"num_inference_steps": 0}, "num_inference_steps", "greater than or equal to 1"),
    ("101 steps", {"num_inference_steps": 101}, "num_inference_steps", "less than or equal to 100"),
    ("strength 1.5", {"strength": 1.5}, "strength", "less than or equal to 1"),
    ("unknown scheduler", {"scheduler": "Turbo"}, "scheduler", "DDIM"),
    ("ratio without ensemble", {"refiner_ratio": 0.3}, "refiner_ratio", "is_ensemble"),
    ("invalid base64", {"seed_image": "not base64 at all!"}, "seed_image", "base64"),
    ("non-image seed", {"seed_image": base64.b64encode(b"just some text, no pixels").decode()},
     "seed_image", "not a decodable image"),
    ("100k-char prompt", {"prompt": "a" * 100_000}, "prompt", "at most 2000 characters"),
    ("empty prompt", {"prompt": ""}, "prompt", "at least 1 character"),
    ("too many images", {"num_images_per_prompt": 5}, "num_images_per_prompt", "less than or equal to 4"),
    ("pixel budget", {"num_images_per_prompt": 4, "height": 2048, "width": 2048},
     "num_images_per_prompt", "limit is"),
    ("height too large", {"height": 4096}, "height", "less than or equal to 2048"),
    ("unknown field", {"num_inference_step": 20}, "num_inference_step", "Extra inputs"),
    ("wrong type", {"seed": "forty-two"}, "seed", "valid integer"),
    ("huge int", {"num_inference_steps": 10**30}, "num_inference_steps", "less than or equal"),
    ("NaN guidance", {"guidance_scale": float("nan")}, "guidance_scale", "finite"),
    ("refiner gets no step", {"is_ensemble": True, "num_inference_steps": 4, "refiner_ratio": 0.1},
     "refiner_ratio", "at least one step"),
    ("lora id with a path", {"lora_id": "../user-123"}, "lora_id", "pattern"),
    ("lora scale too high", {"lora_id": "user-123", "lora_scale": 3}, "lora_scale",
     "less than or equal to 2"),
    ("unknown aspect ratio", {"aspect_ratio": "7:5"}, "aspect_ratio", "1:1"),
]


@pytest.mark.parametrize("name,overrides,field,phrase", CASES, ids=[c[0] for c in CASES])
def test_bad_field_is_422_naming_it(client, name, overrides, field, phrase):
    import json

    # allow_nan: send a literal NaN the way a sloppy client would.
    r = client.post("/generate", content=json.dumps(tiny_request(**overrides), allow_nan=True),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    body = r.json()
    fields = [d["loc"][-1] for d in body["detail"]]
    assert field in fields, body
    assert phrase in body["message"], body["message"]
    assert field in body["message"]


def test_missing_prompt(client):
    r = client.post("/generate", json={"height": 64})
    assert r.status_code == 422 and "prompt" in r.json()["message"]


@pytest.mark.parametrize("payload", [b"{not json", b"[]", b"null", b'"prompt"', b"\xff\xfe"])
def test_malformed_json_is_422(client, payload):
    r = client.post("/generate", content=payload, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text


def test_deeply_nested_json_is_4xx(client):
    # Python's JSON decoder gives up on deep nesting; FastAPI answers 400, not a crash.
    payload = b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = client.post("/generate", content=payload, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text


def test_body_over_limit_is_413(client):
    r = client.post("/generate", content=b"x" * (MAX_BODY + 1),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert str(MAX_BODY) in r.json()["detail"]
    assert r.headers["x-request-id"]


def test_chunked_body_over_limit_is_413(client):
    def chunks():
        for _ in range(MAX_BODY // 65536 + 2):
            yield b"x" * 65536

    r = client.post("/generate", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_huge_seed_image_refused_before_decoding(client):
    # Just under the body limit, but not an image: refused with a field-level message.
    blob = base64.b64encode(b"\0" * (MAX_BODY // 2)).decode()
    r = client.post("/generate", json=tiny_request(seed_image=blob))
    assert r.status_code == 422 and "seed_image" in r.json()["message"]


def test_decompression_bomb_refused(client):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buf, format="PNG")  # ~25 MP, a few KB encoded
    r = client.post("/generate", json=tiny_request(seed_image=base64.b64encode(buf.getvalue()).decode()))
    assert r.status_code == 422
    assert "pixels" in r.json()["message"]


def test_unknown_route_is_404(client):
    assert client.get("/nope").status_code == 404


def test_pndm_with_too_few_steps_is_422(client):
    r = client.post("/generate", json=tiny_request(scheduler="PNDM", num_inference_steps=3))
    assert r.status_code == 422 and "num_inference_steps" in r.json()["message"]


def test_multipart_upload_takes_its_one_file_part(client):
    r = client.post("/files/upload", files={"file": ("notes.txt", b"hello", "text/plain")})
    assert r.status_code == 200, r.text
    assert r.json()["file_name"] == "notes.txt" and r.json()["file_size"] == 5
    assert r.json()["content_type"].startswith("text/plain")


def test_multipart_with_thousands_of_parts_is_refused_fast(client):
    # B11: 5 000 tiny fields (well under the body limit) are refused by the part count.
    fields = {f"f{i}": "x" for i in range(5000)}
    started = time.monotonic()
    r = client.post("/files/upload", data=fields,
                    files={"file": ("a.txt", b"a", "text/plain")})
    assert r.status_code == 422 and "fields" in r.json()["detail"], r.text
    assert r.json()["field"] == "body" and time.monotonic() - started < 5
    two = client.post("/files/upload", files=[("file", ("a.txt", b"a", "text/plain")),
                                              ("file", ("b.txt", b"b", "text/plain"))])
    assert two.status_code == 422 and "file" in two.text

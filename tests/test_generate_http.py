"""POST /generate end to end: HTTP → ingress → SDXL deployments on Ray Serve (tiny models)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.util import b64_png, decode_data_uri, image_bytes, tiny_request


def generate(client, **overrides) -> dict:
    r = client.post("/generate", json=tiny_request(**overrides))
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("mode,extra", [
    ("base", {}),
    ("ensemble", {"is_ensemble": True, "num_inference_steps": 5, "refiner_ratio": 0.2}),
    ("two_step", {"refiner": True, "num_inference_steps_refiner": 4, "refiner_strength": 0.5,
                  "guidance_scale_refiner": 4.0}),
])
def test_each_mode_returns_requested_images(client, mode, extra):
    body = generate(client, num_images_per_prompt=2, height=64, width=96, **extra)
    assert body["mode"] == mode
    assert len(body["images"]) == 2
    for img in body["images"]:
        pil = decode_data_uri(img["url"])
        assert pil.size == (96, 64) == (img["width"], img["height"])
        assert pil.mode == "RGB"
    assert body["has_nsfw_concepts"] == [False, False]
    stages = {"base": {"base"}, "ensemble": {"base", "refiner"}, "two_step": {"base", "refiner"}}
    assert stages[mode] | {"safety", "total"} == set(body["timings"])


@pytest.mark.parametrize("extra", [{}, {"is_ensemble": True, "num_inference_steps": 5},
                                   {"refiner": True, "num_inference_steps_refiner": 4,
                                    "refiner_strength": 0.5}])
def test_same_seed_same_bytes_different_seed_different(client, extra):
    a = image_bytes(generate(client, seed=7, **extra))
    b = image_bytes(generate(client, seed=7, **extra))
    c = image_bytes(generate(client, seed=8, **extra))
    assert a == b
    assert a != c


def test_images_in_a_batch_differ(client):
    first, second = image_bytes(generate(client, num_images_per_prompt=2))
    assert first != second


def test_null_seed_picks_one_and_reports_it(client):
    body = generate(client, seed=None)
    again = generate(client, seed=body["seed"])
    assert image_bytes(body) == image_bytes(again)


@pytest.mark.parametrize("scheduler", ["DDIM", "K_EULER", "EulerA", "DPMSolverMultistep",
                                       "KarrasDPM", "PNDM", "HeunDiscrete"])
@pytest.mark.parametrize("spacing", ["linspace", "trailing", "leading"])
def test_every_scheduler_and_spacing(client, scheduler, spacing):
    body = generate(client, num_inference_steps=4, scheduler=scheduler,
                    timestep_spacing=spacing, safety_filter=False)
    assert decode_data_uri(body["images"][0]["url"]).size == (64, 64)
    assert body["has_nsfw_concepts"] is None


def test_scheduler_changes_the_image(client):
    ddim = image_bytes(generate(client, scheduler="DDIM", safety_filter=False))
    euler_a = image_bytes(generate(client, scheduler="EulerA", safety_filter=False))
    assert ddim != euler_a


def test_aspect_ratio_overrides_height_and_width(client):
    body = generate(client, aspect_ratio="21:9", num_inference_steps=1, safety_filter=False)
    assert (body["images"][0]["width"], body["images"][0]["height"]) == (1536, 640)


def test_img2img_from_seed_image(client):
    rng = np.random.default_rng(0)
    seed_image = b64_png(rng.integers(0, 256, (72, 100, 3), dtype=np.uint8))
    # No explicit size: the output keeps the seed image's size.
    r = client.post("/generate", json={"prompt": "a cat", "num_inference_steps": 4,
                                       "seed_image": seed_image, "strength": 0.5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["images"][0]["width"], body["images"][0]["height"]) == (96, 72)
    # Explicit size: the seed image is resized to it; strength changes the result.
    weak = generate(client, seed_image=seed_image, strength=0.25, height=64, width=64)
    strong = generate(client, seed_image=seed_image, strength=1.0, height=64, width=64)
    assert decode_data_uri(weak["images"][0]["url"]).size == (64, 64)
    assert image_bytes(weak) != image_bytes(strong)


def test_img2img_with_ensemble_refiner(client):
    seed_image = b64_png(np.full((64, 64, 3), 120, dtype=np.uint8))
    body = generate(client, seed_image=seed_image, strength=0.8, is_ensemble=True,
                    num_inference_steps=10)
    assert body["mode"] == "ensemble" and len(body["images"]) == 1


def test_response_carries_request_id_and_usage_is_logged(client, state_dir):
    import sqlalchemy as sa

    r = client.post("/generate", json=tiny_request(), headers={"X-Request-ID": "trace-abc-123"})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "trace-abc-123"
    engine = sa.create_engine(f"sqlite:///{state_dir / 'usage.db'}")
    # The row is written once the response has been sent (the client must not wait on the
    # log), so it can land a moment after the response arrives.
    deadline = time.monotonic() + 10
    while True:
        with engine.connect() as conn:
            row = conn.execute(sa.text(
                "SELECT endpoint, method, status_code, successful, client, latency_s "
                "FROM usage_log WHERE request_id = 'trace-abc-123'")).one_or_none()
        if row is not None or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert row is not None, "no usage row within 10 s"
    assert row.endpoint == "/generate" and row.method == "POST"
    assert row.status_code == 200 and row.successful
    assert row.client == "127.0.0.1" and row.latency_s > 0

"""The SDXL request schema on its own (milliseconds, no Ray, no models)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from genserve.schemas.common import FieldError
from genserve.schemas.sdxl import ASPECT_RATIOS, GenerateRequest
from tests.util import b64_png


def field_of(exc: ValidationError) -> str:
    err = exc.errors()[0]
    cause = (err.get("ctx") or {}).get("error")
    return cause.field if isinstance(cause, FieldError) else err["loc"][-1]


def test_defaults_match_datacrunch():
    r = GenerateRequest(prompt="A cat with a hat")
    assert (r.height, r.width, r.num_inference_steps, r.guidance_scale) == (1024, 1024, 50, 4.0)
    assert (r.num_images_per_prompt, r.seed, r.strength, r.scheduler) == (1, 42, 0.2, "DDIM")
    assert (r.timestep_spacing, r.refiner, r.is_ensemble, r.refiner_ratio) == (
        "linspace", False, False, 0.2)
    assert (r.num_inference_steps_refiner, r.guidance_scale_refiner, r.safety_filter) == (
        50, 1.0, True)
    assert r.mode == "base"


@pytest.mark.parametrize("flags,mode", [
    ({}, "base"), ({"is_ensemble": True}, "ensemble"), ({"refiner": True}, "two_step"),
    ({"refiner": True, "is_ensemble": True}, "ensemble"),
])
def test_modes(flags, mode):
    assert GenerateRequest(prompt="x", **flags).mode == mode


@pytest.mark.parametrize("ratio", list(ASPECT_RATIOS))
def test_aspect_ratio_sizes_are_valid(ratio):
    w, h = GenerateRequest(prompt="x", aspect_ratio=ratio, height=64, width=64).output_size()
    assert (w, h) == ASPECT_RATIOS[ratio] and w % 8 == 0 and h % 8 == 0
    assert abs(w * h - 1024 * 1024) / (1024 * 1024) < 0.1


def test_seed_image_size_is_kept_rounded_and_capped():
    small = b64_png(np.zeros((70, 99, 3), dtype=np.uint8))
    assert GenerateRequest(prompt="x", seed_image=small).output_size() == (96, 64)
    tiny = b64_png(np.zeros((16, 32, 3), dtype=np.uint8))
    assert GenerateRequest(prompt="x", seed_image=tiny).output_size() == (128, 64)
    assert GenerateRequest(prompt="x", seed_image=small, width=64).output_size() == (64, 1024)
    big = b64_png(np.zeros((3000, 2000, 3), dtype=np.uint8))
    w, h = GenerateRequest(prompt="x", seed_image=big, num_images_per_prompt=2).output_size()
    assert w * h * 2 <= 4 * 1024 * 1024 and max(w, h) <= 2048 and w % 8 == h % 8 == 0


def test_data_uri_seed_image_accepted():
    img = "data:image/png;base64," + b64_png(np.zeros((64, 64, 3), dtype=np.uint8))
    assert GenerateRequest(prompt="x", seed_image=img).init_image.size == (64, 64)


@pytest.mark.parametrize("kwargs,field", [
    ({"refiner_ratio": 0.1}, "refiner_ratio"),
    ({"is_ensemble": True, "num_inference_steps": 3}, "refiner_ratio"),
    ({"refiner": True, "num_inference_steps_refiner": 2, "refiner_strength": 0.3},
     "refiner_strength"),
    ({"seed_image": b64_png(np.zeros((8, 8, 3), np.uint8)), "num_inference_steps": 4,
      "strength": 0.2}, "strength"),
    ({"lora_scale": 0.5}, "lora_scale"),
    ({"lora_id": "mine", "lora_name": "offset"}, "lora_name"),
])
def test_cross_field_rules_name_the_field(kwargs, field):
    with pytest.raises(ValidationError) as exc:
        GenerateRequest(prompt="x", **kwargs)
    assert field_of(exc.value) == field


def test_gif_is_not_an_allowed_format():
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, format="GIF")
    with pytest.raises(ValidationError, match="GIF is not allowed"):
        GenerateRequest(prompt="x", seed_image=base64.b64encode(buf.getvalue()).decode())


def test_truncated_png_is_refused():
    import base64

    raw = base64.b64decode(b64_png(np.random.default_rng(0).integers(0, 255, (64, 64, 3),
                                                                        dtype=np.uint8)))
    with pytest.raises(ValidationError, match="corrupt or truncated"):
        GenerateRequest(prompt="x", seed_image=base64.b64encode(raw[: len(raw) // 2]).decode())


def test_every_field_is_documented_with_an_example():
    schema = GenerateRequest.model_json_schema()
    for name, prop in schema["properties"].items():
        assert prop.get("description"), name
        assert prop.get("examples"), name
    GenerateRequest(prompt="x", seed_image=schema["properties"]["seed_image"]["examples"][0])

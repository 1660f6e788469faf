"""Small helpers shared by the tests."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def decode_data_uri(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,"), url[:40]
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def image_bytes(response_json: dict) -> list[bytes]:
    return [base64.b64decode(img["url"].split(",", 1)[1]) for img in response_json["images"]]


def b64_png(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def tiny_request(**overrides) -> dict:
    """A cheap valid request: 64×64, a few steps."""
    return {"prompt": "a cat with a hat", "height": 64, "width": 64, "num_inference_steps": 4,
            **overrides}

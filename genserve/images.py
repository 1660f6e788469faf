"""Decoding user images safely and encoding results.

User images are untrusted: we cap the encoded size before decoding, allow only common raster
formats, refuse decompression bombs by pixel count (a 100 KB PNG can claim 50 000 × 50 000),
and fully load the image here so a truncated file fails at validation, not mid-generation.
"""

from __future__ import annotations

import base64
import binascii
import io
import re

import numpy as np
from PIL import Image, UnidentifiedImageError

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_ENCODED_BYTES = 16 * 1024 * 1024
_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(;[\w-]+=[\w.-]+)*;base64,", re.I)


class ImageDecodeError(ValueError):
    """The value is not a usable image; the message says why (shown to the user)."""


def decode_base64_image(value: str, *, max_pixels: int = MAX_IMAGE_PIXELS,
                        max_bytes: int = MAX_ENCODED_BYTES) -> Image.Image:
    """Base64 (optionally a ``data:image/...;base64,`` URI) → an RGB `PIL.Image`."""
    match = _DATA_URI.match(value)
    if match:
        value = value[match.end():]
    # base64 is 4 chars per 3 bytes: check before decoding so a huge string costs nothing.
    if len(value) * 3 // 4 > max_bytes:
        raise ImageDecodeError(f"encoded image is larger than {max_bytes} bytes")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageDecodeError(f"not valid base64 ({exc})") from None
    return decode_image_bytes(raw, max_pixels=max_pixels)


def decode_image_bytes(raw: bytes, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    try:
        with Image.open(io.BytesIO(raw)) as probe:
            fmt = probe.format
            width, height = probe.size
    except (UnidentifiedImageError, OSError):
        raise ImageDecodeError("not a decodable image (PNG, JPEG or WebP expected)") from None
    if fmt not in ALLOWED_FORMATS:
        raise ImageDecodeError(f"image format {fmt} is not allowed; use one of {ALLOWED_FORMATS}")
    if width * height > max_pixels:
        raise ImageDecodeError(f"image is {width}×{height} = {width * height} pixels; "
                               f"the limit is {max_pixels}")
    try:
        image = Image.open(io.BytesIO(raw))
        image.load()
    except (OSError, Image.DecompressionBombError, ValueError) as exc:
        raise ImageDecodeError(f"image data is corrupt or truncated ({exc})") from None
    from PIL import ImageOps

    return ImageOps.exif_transpose(image).convert("RGB")


def encode_png(image: np.ndarray | Image.Image) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def png_data_uri(image: np.ndarray | Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(encode_png(image)).decode("ascii")

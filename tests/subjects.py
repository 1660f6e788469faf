"""A small synthetic "subject" for personalization tests: one distinctive pattern (a magenta
ring on teal stripes) photographed with small shifts and scale changes, as a zip archive."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def subject_image(i: int, size: int = 96) -> Image.Image:
    rng = np.random.default_rng(i)
    image = Image.new("RGB", (size, size), (0, 128, 128))
    draw = ImageDraw.Draw(image)
    for x in range(0, size, 12):
        draw.rectangle([x, 0, x + 5, size], fill=(20, 170, 160))
    r = size // 4 + int(rng.integers(-3, 4))
    cx, cy = size // 2 + int(rng.integers(-8, 9)), size // 2 + int(rng.integers(-8, 9))
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=(230, 20, 200), width=6)
    return image


def subject_zip(path: Path, n: int = 4, size: int = 96, captions: dict[str, str] | None = None
                ) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(n):
            buf = io.BytesIO()
            subject_image(i, size).save(buf, format="PNG")
            zf.writestr(f"photos/img_{i}.png", buf.getvalue())
        zf.writestr("photos/readme.txt", "not an image")
        if captions is not None:
            import json

            zf.writestr("photos/metadata.jsonl",
                        "".join(json.dumps({"file_name": k, "text": v}) + "\n"
                                for k, v in captions.items()))
    return path

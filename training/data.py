"""Training examples for subject fine-tuning (DreamBooth-LoRA with pivotal tuning).

The story, per image of an extracted archive (`genserve.archive.extract_images`):
load it upright (EXIF orientation) as RGB → pick a crop window of the training aspect ratio
(around the largest face, at the center, or at random) → resize to the training size →
caption it (the captions file by ``file_name``, else ``instance_prompt``) with the
placeholder word replaced by the new tokens (``"a photo of TOK"`` → ``"a photo of <s0><s1>"``).
Per-step augmentation (`augment`, `caption_dropout`) is left to the training loop.

Every random choice draws from a passed ``random.Random`` or ``numpy.random.Generator`` (both
have ``random()`` and ``uniform()``), so a seed reproduces the data exactly.

>>> rng = random.Random(0)                                            # doctest: +SKIP
>>> examples = prepare_examples(report, width=768, height=768, center_crop=False,
...     face_aware=True, offset_x=0.0, offset_y=0.0, captions={}, token_abstraction="TOK",
...     new_tokens=["<s0>", "<s1>"], instance_prompt="a photo of TOK", rng=rng)  # doctest: +SKIP
>>> examples[0].pixels.shape, examples[0].caption                     # doctest: +SKIP
((768, 768, 3), 'a photo of <s0><s1>')
"""

from __future__ import annotations

import functools
import json
import posixpath
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from genserve.archive import ExtractReport
from genserve.errors import InvalidInput
from genserve.images import ImageDecodeError, decode_image_bytes

Rng = random.Random | np.random.Generator
Box = tuple[int, int, int, int]  # (left, top, right, bottom), PIL's crop convention

IMAGES_FIELD = "images_data_url"
CAPTIONS_FIELD = "captions_file_url"
PROMPT_FIELD = "instance_prompt"

# Face detection runs on a copy at most this large: the cascade's cost grows with pixels
# and a training photo's face is large; 640 px keeps a 12-megapixel photo near 0.1 s on one
# core (both passes, no face found).
_DETECT_MAX_SIDE = 640
# Faces smaller than this fraction of the short side are background people, not the subject.
_MIN_FACE_FRACTION = 0.08
# The crop frames the face box scaled by this much around its center: head, hair and some
# shoulders, as in portrait datasets; the subject stays recognisable at 768².
FACE_EXPAND = 2.0


@dataclass(eq=False)
class SubjectExample:
    """One training image, ready for the VAE, and its caption.

    ``original_size`` (height, width before cropping) and ``crop_top_left`` (top, left of the
    window, in resized-image pixels) are SDXL's micro-conditioning ``add_time_ids``.
    """

    pixels: np.ndarray  # uint8, height × width × 3 (RGB)
    caption: str
    file_name: str
    original_size: tuple[int, int] = (0, 0)
    crop_top_left: tuple[int, int] = (0, 0)


# -- images ------------------------------------------------------------------------------------

def load_subject_image(path: Path) -> Image.Image:
    """An RGB image, turned upright by its EXIF orientation, with the same format and pixel
    checks as request images (`genserve.images.decode_image_bytes`)."""
    path = Path(path)
    try:
        return decode_image_bytes(path.read_bytes())
    except ImageDecodeError as exc:
        raise InvalidInput(f"`{IMAGES_FIELD}`: {path.name}: {exc}", IMAGES_FIELD) from None


@functools.lru_cache(maxsize=1)
def _face_cascade():
    import cv2  # imported here: opencv takes ~0.1 s to import; only cropping needs it

    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"could not load OpenCV's face cascade from {path}")
    return cascade


def face_box(image: Image.Image) -> Box | None:
    """The largest frontal face as ``(left, top, right, bottom)``, or None.

    OpenCV's Haar cascade: fast and dependency-light, but frontal faces only; profiles and
    heavily occluded faces are missed (the crop then falls back to center/random).
    """
    import cv2

    gray = np.asarray(image.convert("L"))
    scale = min(1.0, _DETECT_MAX_SIDE / max(gray.shape))
    if scale < 1.0:
        gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    min_side = max(24, int(min(gray.shape) * _MIN_FACE_FRACTION))
    # As shot first; then histogram-equalised, which rescues dark or flat photos (and loses
    # some well-lit faces, hence not always).
    for candidate in (gray, cv2.equalizeHist(gray)):
        faces = _face_cascade().detectMultiScale(candidate, scaleFactor=1.1, minNeighbors=5,
                                                 minSize=(min_side, min_side))
        if len(faces):
            break
    else:
        return None
    x, y, w, h = (float(v) / scale for v in max(faces, key=lambda f: int(f[2]) * int(f[3])))
    width, height = image.size
    return (max(0, round(x)), max(0, round(y)), min(width, round(x + w)),
            min(height, round(y + h)))


def crop_around_box(image: Image.Image, box: Box, width: int, height: int, *,
                    expand: float = FACE_EXPAND) -> Box:
    """The crop window (``(left, top, right, bottom)``) of aspect ``width:height`` that frames
    ``box`` scaled by ``expand`` around its center, clamped to the image.

    The window is the smallest that holds the expanded box, but not smaller than the output
    size where the image allows (no needless upscaling), and never larger than the image:
    then the box stays inside as far as the aspect ratio permits.

    >>> crop_around_box(Image.new("RGB", (400, 200)), (300, 50, 340, 90), 64, 64)
    (280, 30, 360, 110)
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"`width` and `height` must be positive but are {width} and {height}")
    left, top, right, bottom = box
    if not (0 <= left < right <= image.width and 0 <= top < bottom <= image.height):
        raise ValueError(f"box {box} is not a non-empty box inside the {image.width}×"
                         f"{image.height} image")
    aspect = width / height
    fit_w, _ = _fit(image.size, aspect)
    side = max(right - left, bottom - top) * expand
    # Smallest window of this aspect holding a side × side square.
    want_w = side * max(aspect, 1.0)
    window_w = min(max(want_w, min(width, fit_w)), fit_w)
    return _place(image.size, window_w, aspect, (left + right) / 2, (top + bottom) / 2)


def crop_window(image: Image.Image, width: int, height: int, *, center_crop: bool,
                face_aware: bool, offset_x: float, offset_y: float, rng: Rng,
                jitter: tuple[int, int] = (0, 0)) -> Box:
    """Where `crop_and_resize` crops, as ``(left, top, right, bottom)``.

    Face-aware with a detected face: `crop_around_box`. Otherwise the largest window of the
    target aspect ratio, placed by offsets in [-1, 1] across the slack (the spare pixels):
    0 is centered, -1 flush left/top, 1 flush right/bottom. With ``center_crop`` the offsets
    are ``offset_x``/``offset_y`` (0, 0 = a plain center crop); without, they are drawn
    uniformly from ``rng`` and the given ones are not used. ``jitter`` (x, y), in pixels of
    the *output* size, then shifts a center crop by a uniform draw in ±jitter (the schema's
    ``random_crop_offset_x/y``), within the image.
    """
    for name, value in (("offset_x", offset_x), ("offset_y", offset_y)):
        if not -1.0 <= value <= 1.0:
            raise ValueError(f"`{name}` must be in [-1, 1] but is {value}")
    if width <= 0 or height <= 0:
        raise ValueError(f"`width` and `height` must be positive but are {width} and {height}")
    if face_aware:
        box = face_box(image)
        if box is not None:
            return crop_around_box(image, box, width, height)
    if not center_crop:
        offset_x, offset_y = float(rng.uniform(-1.0, 1.0)), float(rng.uniform(-1.0, 1.0))
    aspect = width / height
    fit_w, fit_h = _fit(image.size, aspect)
    cx = image.width / 2 + offset_x * (image.width - fit_w) / 2
    cy = image.height / 2 + offset_y * (image.height - fit_h) / 2
    if center_crop and any(jitter):
        scale = fit_w / width  # source pixels per output pixel
        cx += float(rng.uniform(-jitter[0], jitter[0])) * scale
        cy += float(rng.uniform(-jitter[1], jitter[1])) * scale
    return _place(image.size, fit_w, aspect, cx, cy)


def crop_and_resize(image: Image.Image, width: int, height: int, *, center_crop: bool,
                    face_aware: bool, offset_x: float, offset_y: float,
                    rng: Rng) -> Image.Image:
    """Crop to the ``width:height`` aspect ratio (see `crop_window`) and resize to exactly
    ``width`` × ``height``."""
    window = crop_window(image, width, height, center_crop=center_crop, face_aware=face_aware,
                         offset_x=offset_x, offset_y=offset_y, rng=rng)
    return image.resize((width, height), Image.Resampling.LANCZOS, box=window)


def _fit(size: tuple[int, int], aspect: float) -> tuple[float, float]:
    """The largest width, height of the given aspect ratio inside ``size``."""
    image_w, image_h = size
    fit_w = min(float(image_w), image_h * aspect)
    return fit_w, fit_w / aspect


def _place(size: tuple[int, int], window_w: float, aspect: float, cx: float,
           cy: float) -> Box:
    """A window of width ``window_w`` and the given aspect, centered on (cx, cy) as far as
    the image allows, in whole pixels."""
    image_w, image_h = size
    w = min(image_w, max(1, round(window_w)))
    h = min(image_h, max(1, round(window_w / aspect)))
    left = min(max(round(cx - w / 2), 0), image_w - w)
    top = min(max(round(cy - h / 2), 0), image_h - h)
    return left, top, left + w, top + h


def augment(image: Image.Image, *, random_flip: bool, rotation_range: tuple[float, float],
            rng: Rng, fill: str = "reflect") -> Image.Image:
    """Mirror with probability 0.5 (if ``random_flip``), then rotate by an angle drawn from
    ``rotation_range`` (degrees, counter-clockwise), filling the corners by reflecting the
    image (``fill="reflect"``) or repeating its edge (``"edge"``) so no black wedges are
    learned. Size is kept."""
    import cv2

    low, high = rotation_range
    if not -180 <= low <= high <= 180:
        raise ValueError(f"`rotation_range` must be (low, high) with -180 ≤ low ≤ high ≤ 180 "
                         f"but is {rotation_range}")
    borders = {"reflect": cv2.BORDER_REFLECT_101, "edge": cv2.BORDER_REPLICATE}
    if fill not in borders:
        raise ValueError(f"`fill` must be one of {list(borders)} but is {fill!r}")
    if random_flip and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if (low, high) == (0, 0):
        return image
    angle = float(rng.uniform(low, high))
    pixels = np.asarray(image.convert("RGB"))
    h, w = pixels.shape[:2]
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
    rotated = cv2.warpAffine(pixels, matrix, (w, h), flags=cv2.INTER_LINEAR,
                             borderMode=borders[fill])
    return Image.fromarray(rotated)


# -- captions ----------------------------------------------------------------------------------

def load_captions(jsonl_path: Path, caption_column: str) -> dict[str, str]:
    """``{file_name: caption}`` from JSON lines like ``{"file_name": "a.jpg", "text": "..."}``
    (the Hugging Face imagefolder ``metadata.jsonl`` layout). Blank lines are ignored; a bad
    line raises `InvalidInput` naming ``captions_file_url`` and the line number."""
    captions: dict[str, str] = {}
    first_line: dict[str, int] = {}
    with open(jsonl_path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()
            except UnicodeDecodeError:
                raise _bad_line(number, "not valid UTF-8") from None
            if not line:
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise _bad_line(number, f"not valid JSON ({exc})") from None
            if not isinstance(row, dict):
                raise _bad_line(number, f"expected a JSON object but got {type(row).__name__}")
            name, caption = row.get("file_name"), row.get(caption_column)
            if not isinstance(name, str) or not name.strip():
                raise _bad_line(number, f"`file_name` must be a non-empty string but is {name!r}")
            if not isinstance(caption, str):
                found = f"is {caption!r}" if caption_column in row else "is missing"
                raise _bad_line(number, f"the caption column {caption_column!r} must be a string "
                                        f"but {found} (keys: {sorted(row)})")
            key = _normalise_name(name)
            if key in captions:
                raise _bad_line(number, f"{name!r} was already captioned on line "
                                        f"{first_line[key]}")
            captions[key], first_line[key] = caption, number
    return captions


def _bad_line(number: int, why: str) -> InvalidInput:
    return InvalidInput(f"`{CAPTIONS_FIELD}` line {number}: {why}", CAPTIONS_FIELD)


def apply_token(caption: str, token_abstraction: str, new_tokens: list[str]) -> str:
    """Replace each whole-word ``token_abstraction`` by the joined new tokens.

    >>> apply_token("a photo of TOK, TOK's dog, TOKYO", "TOK", ["<s0>", "<s1>"])
    "a photo of <s0><s1>, <s0><s1>'s dog, TOKYO"
    """
    if not token_abstraction or not new_tokens:
        raise ValueError("`token_abstraction` and `new_tokens` must be non-empty but are "
                         f"{token_abstraction!r} and {new_tokens!r}")
    # Whole words only: "TOK" must not eat the start of "TOKYO".
    pattern = rf"(?<!\w){re.escape(token_abstraction)}(?!\w)"
    replacement = "".join(new_tokens)
    return re.sub(pattern, lambda _: replacement, caption)


def caption_dropout(caption: str, p: float, rng: Rng) -> str:
    """``""`` with probability ``p`` (trains the unconditional branch for classifier-free
    guidance), else ``caption``. Always draws once from ``rng``, so streams stay aligned
    whatever ``p`` is."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"`p` must be in [0, 1] but is {p}")
    return "" if rng.random() < p else caption


def _normalise_name(name: str) -> str:
    name = name.strip().replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


# -- examples ----------------------------------------------------------------------------------

def prepare_examples(report: ExtractReport, *, width: int, height: int, center_crop: bool,
                     face_aware: bool, offset_x: float, offset_y: float,
                     captions: dict[str, str], token_abstraction: str, new_tokens: list[str],
                     instance_prompt: str | None, rng: Rng,
                     jitter: tuple[int, int] = (0, 0)) -> list[SubjectExample]:
    """Every image of ``report`` cropped, resized and captioned, in archive order.

    A caption is looked up by the image's path in the archive relative to the captions file
    (as imagefolder's ``metadata.jsonl`` names it), then by its archive path, then by its bare
    file name if no other image shares it; without one, ``instance_prompt`` is used. The
    placeholder ``token_abstraction`` is replaced by ``new_tokens`` in either.
    """
    if not captions and instance_prompt is None:
        raise InvalidInput(f"`{PROMPT_FIELD}` is required when there is no captions file",
                           PROMPT_FIELD)
    captions = {_normalise_name(k): v for k, v in captions.items()}
    base_counts = Counter(posixpath.basename(_normalise_name(report.sources.get(p.name, p.name)))
                          for p in report.images)
    examples = []
    for path in report.images:
        caption = _caption_for(path.name, report, captions, base_counts)
        if caption is None:
            if instance_prompt is None:
                raise InvalidInput(f"`{CAPTIONS_FIELD}` has no caption for "
                                   f"{report.sources.get(path.name, path.name)!r} and no "
                                   f"`{PROMPT_FIELD}` was given to fall back on",
                                   CAPTIONS_FIELD)
            caption = instance_prompt
        image = load_subject_image(path)
        window = crop_window(image, width, height, center_crop=center_crop,
                             face_aware=face_aware, offset_x=offset_x, offset_y=offset_y,
                             rng=rng, jitter=jitter)
        resized = image.resize((width, height), Image.Resampling.LANCZOS, box=window)
        scale = width / (window[2] - window[0])
        examples.append(SubjectExample(
            pixels=np.asarray(resized, dtype=np.uint8),
            caption=apply_token(caption, token_abstraction, new_tokens),
            file_name=path.name,
            original_size=(image.height, image.width),
            crop_top_left=(round(window[1] * scale), round(window[0] * scale))))
    return examples


def _caption_for(name: str, report: ExtractReport, captions: dict[str, str],
                 base_counts: Counter[str]) -> str | None:
    source = _normalise_name(report.sources.get(name, name))
    keys = [source]
    if report.captions_file is not None:
        captions_dir = posixpath.dirname(
            _normalise_name(report.sources.get(report.captions_file.name, "")))
        if captions_dir and source.startswith(captions_dir + "/"):
            keys.insert(0, source[len(captions_dir) + 1:])
    base = posixpath.basename(source)
    if base_counts[base] == 1:  # a bare "me.jpg" only when no other image has that name
        keys.append(base)
    return next((captions[k] for k in keys if k in captions), None)

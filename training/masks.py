"""Per-pixel loss weights from CLIPSeg: learn the subject (``clip_seg_mask_prompt``, e.g.
"head") more than the background.

The default model is `CIDAS/clipseg-rd64-refined`. A mask is computed at the trainer's latent
resolution and multiplies the diffusion loss there; `class_mask` derives the weights used on
prior-preservation class images, and `save_mask_images` writes what was used for a person to
look at (``debug_loss_masks``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from genserve.pipelines.loading import Placement

DEFAULT_MASK_MODEL = "CIDAS/clipseg-rd64-refined"
MASK_STYLES = ("none", "normal", "invert")
_MAX_NAME = 100  # characters of a mask file's stem; keeps paths well under OS limits


class SubjectMasker:
    """CLIPSeg loaded once; `masks` turns its logits into loss weights.

    >>> masker = SubjectMasker(DEFAULT_MASK_MODEL)                       # doctest: +SKIP
    >>> masker.masks(photos, "head", size=(96, 96), temperature=1.0,
    ...              bias=0.001).shape                                   # doctest: +SKIP
    (4, 96, 96)
    """

    def __init__(self, model_id: str, *, revision: str | None = None, device: str = "auto",
                 dtype: str = "auto"):
        from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

        self.model_id = model_id
        self.placement = Placement.resolve(device, dtype)
        # The CLIPSeg repos ship fp32 weights only (no fp16 variant file).
        self.model = self.placement.load(CLIPSegForImageSegmentation, model_id, revision,
                                         fp16_variant=False)
        self.processor = CLIPSegProcessor.from_pretrained(model_id, revision=revision)

    def masks(self, images: list[Image.Image], prompt: str, *, size: tuple[int, int],
              temperature: float, bias: float, batch_size: int = 8) -> np.ndarray:
        """Loss weights for ``prompt`` in each image: float32 ``[N, height, width]`` in
        ``[bias, 1]``, for ``size=(height, width)``.

        With ``l`` CLIPSeg's logits resized bilinearly to ``size`` and ``T`` the temperature::

            m = sigmoid(l / T) / max(sigmoid(l / T))      # per image, so its peak is 1
            w = bias + (1 - bias) * m

        Rescaling to a peak of 1 gives the most subject-like pixel full weight even when
        CLIPSeg is unsure (real logits often peak below 0), so the loss scale does not depend
        on its confidence. The affine floor, rather than ``max(m, bias)``, keeps the ordering of
        background pixels instead of flattening them to one value, and keeps ``w <= 1``.
        As ``T`` grows every ``m`` tends to 1 (uniform weights, i.e. no mask); as it shrinks
        the mask tends to a hard cut-out.
        """
        if not prompt or not prompt.strip():
            raise ValueError(f"`prompt` must be a non-empty text but is {prompt!r}.")
        if not (temperature > 0 and np.isfinite(temperature)):
            raise ValueError(f"`temperature` must be a finite number > 0 but is {temperature}.")
        if not 0.0 <= bias <= 1.0:
            raise ValueError(f"`bias` must be in [0, 1] but is {bias}.")
        height, width = size
        if height < 1 or width < 1:
            raise ValueError(f"`size` must be two positive integers but is {size}.")
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be at least 1 but is {batch_size}.")
        out = np.empty((len(images), height, width), dtype=np.float32)
        for start in range(0, len(images), batch_size):
            chunk = [img.convert("RGB") for img in images[start:start + batch_size]]
            logits = self._logits(chunk, prompt, (height, width))
            out[start:start + len(chunk)] = _weights(logits, temperature, bias).numpy()
        return out

    def _logits(self, images: list[Image.Image], prompt: str,
                size: tuple[int, int]) -> torch.Tensor:
        # One copy of the prompt per image: the model pairs text and image rows one to one.
        inputs = self.processor(text=[prompt] * len(images), images=images, padding=True,
                                return_tensors="pt")
        device, dtype = self.placement.device, self.placement.dtype
        with torch.inference_mode():
            logits = self.model(
                input_ids=inputs["input_ids"].to(device),
                attention_mask=inputs["attention_mask"].to(device),
                pixel_values=inputs["pixel_values"].to(device, dtype),
            ).logits
        # The processor squashed each image to a square; resizing straight to (height, width)
        # undoes that. Logits are resized, not probabilities: interpolating after the sigmoid
        # would blur a sharp (low-temperature) edge into a ramp the temperature never asked for.
        logits = logits.float().reshape(len(images), 1, *logits.shape[-2:])
        logits = torch.nn.functional.interpolate(logits, size=size, mode="bilinear",
                                                 align_corners=False)
        return logits[:, 0].cpu()


def _weights(logits: torch.Tensor, temperature: float, bias: float) -> torch.Tensor:
    """The formula of `SubjectMasker.masks`, on ``[N, H, W]`` logits."""
    # In log space: at small temperatures sigmoid underflows to 0 everywhere, and 0 / 0 would
    # give NaN where the ratio to the peak is still well defined.
    log_m = torch.nn.functional.logsigmoid(logits / temperature)
    log_m = log_m - log_m.amax(dim=(-2, -1), keepdim=True)
    return (bias + (1.0 - bias) * log_m.exp()).clamp_(bias, 1.0)


def class_mask(mask: np.ndarray, style: str, bias: float) -> np.ndarray:
    """The loss weights for a prior-preservation class image, from a `SubjectMasker` mask.

    ``none``: all ones (the whole class image counts); ``normal``: the mask itself;
    ``invert``: ``1 + bias - mask``, i.e. ``bias + (1 - bias) * (1 - m)`` in the terms of
    `SubjectMasker.masks`, which maps ``[bias, 1]`` onto itself, so the floor still holds.

    >>> class_mask(np.array([0.25, 0.5, 1.0]), "invert", bias=0.25)
    array([1.  , 0.75, 0.25], dtype=float32)
    """
    if style not in MASK_STYLES:
        raise ValueError(f"`style` must be one of {list(MASK_STYLES)} but is {style!r}.")
    mask = np.asarray(mask, dtype=np.float32)
    if style == "none":
        return np.ones_like(mask)
    if style == "normal":
        return mask.copy()
    return np.clip(1.0 + bias - mask, bias, 1.0).astype(np.float32)


def save_mask_images(masks: np.ndarray, names: list[str], out_dir: Path) -> list[Path]:
    """Write each ``[H, W]`` mask in ``[0, 1]`` as an 8-bit grayscale PNG (white = weight 1)
    named after ``names`` (made safe as file names, kept unique); returns the paths in order.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"`masks` must have shape [N, height, width] but has {masks.shape}.")
    if len(names) != len(masks):
        raise ValueError(f"`names` must have one entry per mask ({len(masks)}) but has "
                         f"{len(names)}.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    used: set[str] = set()
    for mask, name in zip(masks, names):
        stem = _unique(_safe_stem(name), used)
        path = out_dir / f"{stem}.png"
        pixels = np.round(np.clip(mask, 0.0, 1.0) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(path)  # 2-D uint8 gives mode "L": 8-bit grayscale
        paths.append(path)
    return paths


def _safe_stem(name: str) -> str:
    # Only the last path component counts ("../x.jpg" must not escape out_dir), without its
    # image extension; anything outside [A-Za-z0-9._-] becomes "_".
    stem = Path(str(name).replace("\\", "/")).stem
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:_MAX_NAME]
    return stem or "mask"


def _unique(stem: str, used: set[str]) -> str:
    # Case-folded, so "A" and "a" do not overwrite each other on case-insensitive disks.
    candidate, n = stem, 1
    while candidate.lower() in used:
        candidate, n = f"{stem}-{n}", n + 1
    used.add(candidate.lower())
    return candidate

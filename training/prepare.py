"""Everything the training workers need, computed once before they start.

Fetch the photos (SSRF-checked URL, data URI, s3:// or an operator's local path) → extract
safely → crop and caption (captions file, else the captioning model, else ``instance_prompt``)
→ CLIPSeg loss masks → class images for prior preservation from the base model → optional
debug archives. The result is plain arrays (`PreparedData`): Ray ships it to every worker
through the object store, so workers on other nodes need no shared filesystem.
"""

from __future__ import annotations

import io
import json
import logging
import random
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from genserve.errors import InvalidInput
from training.tokens import token_names

log = logging.getLogger(__name__)

MAX_ARCHIVE_BYTES = 512 * 1024 * 1024
MAX_CAPTIONS_BYTES = 8 * 1024 * 1024
VAE_FACTOR = 8  # SDXL latents are 1/8 of the image side


@dataclass
class PreparedData:
    """Training examples (instance, then optional class images) as arrays."""

    pixels: np.ndarray                       # uint8 [N, H, W, 3]
    captions: list[str]
    original_sizes: list[tuple[int, int]]
    crops: list[tuple[int, int]]
    masks: np.ndarray                        # float32 [N, H/8, W/8], loss weights
    file_names: list[str]
    class_pixels: np.ndarray | None = None   # uint8 [M, H, W, 3]
    class_captions: list[str] = field(default_factory=list)
    class_masks: np.ndarray | None = None
    debug_files: dict[str, bytes] = field(default_factory=dict)  # name → zip bytes
    report: dict[str, Any] = field(default_factory=dict)


def prepare(cfg: dict[str, Any], *, allow_local: bool = True,
            fetch_allow_hosts: list[str] | None = None) -> PreparedData:
    """Run the whole preparation for a job config (`PersonalizeRequest.to_config()`)."""
    from genserve.archive import extract_images
    from genserve.fetch import Fetcher
    from training import data as D
    from training.sources import fetch_text, fetch_to

    fetcher = Fetcher(allow_hosts=fetch_allow_hosts or [])
    rng = random.Random(cfg["seed"])
    width, height = cfg["resolution_width"], cfg["resolution_height"]
    new_tokens = token_names(cfg["num_new_tokens_per_abstraction"])
    if not cfg["train_text_encoder_ti"]:
        new_tokens = [cfg["token_abstraction"]]  # no new tokens: the word itself stays
    with tempfile.TemporaryDirectory(prefix="genserve-prepare-") as tmp:
        tmp_path = Path(tmp)
        archive = fetch_to(cfg["images_data_url"], tmp_path / "images.archive",
                           field="images_data_url", max_bytes=MAX_ARCHIVE_BYTES,
                           fetcher=fetcher, allow_local=allow_local)
        report = extract_images(archive, tmp_path / "images", field="images_data_url")
        captions: dict[str, str] = {}
        if cfg["captions_file_url"]:
            text = fetch_text(cfg["captions_file_url"], field="captions_file_url",
                              max_bytes=MAX_CAPTIONS_BYTES, fetcher=fetcher,
                              allow_local=allow_local)
            (tmp_path / "captions.jsonl").write_text(text, encoding="utf-8")
            captions = D.load_captions(tmp_path / "captions.jsonl", cfg["caption_column"])
        elif report.captions_file is not None:
            captions = D.load_captions(report.captions_file, cfg["caption_column"])
        examples = D.prepare_examples(
            report, width=width, height=height, center_crop=cfg["center_crop"],
            face_aware=cfg["face_aware_cropping"],
            offset_x=0.0, offset_y=0.0,
            jitter=(cfg["random_crop_offset_x"], cfg["random_crop_offset_y"]),
            captions=captions, token_abstraction=cfg["token_abstraction"],
            new_tokens=new_tokens, instance_prompt=cfg["instance_prompt"], rng=rng)
        caption_source = "file" if captions else "instance_prompt"
        if not captions and not cfg["skip_caption_generation"]:
            _generate_captions(examples, cfg, new_tokens)
            caption_source = "generated"
        skipped = [{"file": name, "reason": why} for name, why in report.skipped]
    if not examples:
        raise InvalidInput("images_data_url: the archive holds no usable images"
                           + (f" (skipped: {skipped[:5]})" if skipped else ""), "images_data_url")
    pixels = np.stack([e.pixels for e in examples])
    out = PreparedData(
        pixels=pixels, captions=[e.caption for e in examples],
        original_sizes=[tuple(e.original_size) for e in examples],
        crops=[tuple(e.crop_top_left) for e in examples],
        masks=np.ones((len(examples), height // VAE_FACTOR, width // VAE_FACTOR), np.float32),
        file_names=[e.file_name for e in examples],
        report={"images": len(examples), "skipped": skipped, "captions": caption_source})
    _add_masks(out, cfg)
    if cfg["with_prior_preservation"]:
        _add_class_images(out, cfg)
    _add_debug_files(out, cfg)
    return out


def _generate_captions(examples: list, cfg: dict[str, Any], new_tokens: list[str]) -> None:
    from training.captions import Captioner
    from training.data import apply_token

    pre = cfg["preprocessing"]
    captioner = Captioner(pre["captioning_model"])
    texts = captioner.caption([Image.fromarray(e.pixels) for e in examples])
    prompt = apply_token(cfg["instance_prompt"], cfg["token_abstraction"], new_tokens)
    for example, text in zip(examples, texts, strict=True):
        # The subject's tokens lead (they are what is learned); the generated words describe
        # the rest of the picture so it is not baked into the tokens.
        example.caption = f"{prompt}, {text}" if text else prompt


def _add_masks(out: PreparedData, cfg: dict[str, Any]) -> None:
    from training.masks import SubjectMasker

    masker = SubjectMasker(cfg["preprocessing"]["segmentation_model"])
    size = out.masks.shape[1:]
    out.masks = masker.masks([Image.fromarray(p) for p in out.pixels],
                             cfg["clip_seg_mask_prompt"], size=size,
                             temperature=cfg["clip_seg_mask_temperature"],
                             bias=cfg["clip_seg_mask_bias"]).astype(np.float32)
    out._masker = masker  # reused for class images, dropped before shipping


def _add_class_images(out: PreparedData, cfg: dict[str, Any]) -> None:
    from genserve.pipelines.params import BaseParams
    from genserve.pipelines.sdxl_base import SDXLBasePipeline
    from training.masks import class_mask

    pre = cfg["preprocessing"]
    prompt = pre["class_prompt"] or f"a photo of a {cfg['photo_class'].lower()}"
    count = pre["num_class_images"] or len(out.pixels)
    kwargs = {"revision": cfg["revision"]} if cfg["revision"] else {}
    base = SDXLBasePipeline(cfg["model_url"], **kwargs)
    images = []
    for i in range(count):
        batch = base.generate(BaseParams(
            prompt=prompt, height=cfg["resolution_height"], width=cfg["resolution_width"],
            steps=pre["class_image_steps"], guidance_scale=5.0, seed=cfg["seed"] + i))
        images.append(batch.images[0])
    del base
    out.class_pixels = np.stack(images)
    out.class_captions = [prompt] * count
    masker = out.__dict__.pop("_masker")
    masks = masker.masks([Image.fromarray(p) for p in out.class_pixels],
                         cfg["clip_seg_mask_prompt"], size=out.masks.shape[1:],
                         temperature=cfg["clip_seg_mask_temperature"],
                         bias=cfg["clip_seg_mask_bias"])
    out.class_masks = np.stack([class_mask(m, cfg["class_image_mask_style"],
                                           cfg["clip_seg_mask_bias"]) for m in masks])
    out.class_masks = out.class_masks.astype(np.float32)


def _add_debug_files(out: PreparedData, cfg: dict[str, Any]) -> None:
    out.__dict__.pop("_masker", None)
    if cfg["debug_dataset"]:
        out.debug_files["debug_dataset.zip"] = _zip_images(
            out.pixels, out.file_names, out.captions, out.class_pixels, out.class_captions)
    if cfg["debug_loss_masks"]:
        masks = [(m * 255).round().astype(np.uint8) for m in out.masks]
        class_masks = None if out.class_masks is None else [
            (m * 255).round().astype(np.uint8) for m in out.class_masks]
        out.debug_files["debug_masks.zip"] = _zip_images(
            np.stack(masks), out.file_names, None, class_masks, None)


def _zip_images(images, names: list[str], captions: list[str] | None, class_images,
                class_captions: list[str] | None) -> bytes:
    buf = io.BytesIO()
    lines = []
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, (image, name) in enumerate(zip(images, names, strict=True)):
            file_name = f"instance/{i:04d}_{Path(name).stem[:60]}.png"
            zf.writestr(file_name, _png(image))
            if captions is not None:
                lines.append({"file_name": file_name, "text": captions[i]})
        for i, image in enumerate(class_images if class_images is not None else []):
            file_name = f"class/{i:04d}.png"
            zf.writestr(file_name, _png(image))
            if class_captions:
                lines.append({"file_name": file_name, "text": class_captions[i]})
        if lines:
            zf.writestr("metadata.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
    return buf.getvalue()


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()

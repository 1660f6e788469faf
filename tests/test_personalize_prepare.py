"""Data preparation for a personalization job, with the tiny captioner, CLIPSeg and SDXL base
(no Ray): archive → crops, captions, masks, class images, debug archives."""

from __future__ import annotations

import base64
import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from genserve.errors import InvalidInput
from genserve.schemas.personalize import PersonalizeRequest
from tests.conftest import TINY_DIR
from tests.subjects import subject_zip
from training.prepare import prepare

SIZE = 64


@pytest.fixture(scope="module")
def models():
    from genserve import tiny

    return {k: str(v) for k, v in tiny.build(
        TINY_DIR, roles=["sdxl-base", "sdxl-vae", "captioner", "clipseg"]).items()}


def config(models, archive, **fields) -> dict:
    pre = {"captioning_model": models["captioner"], "segmentation_model": models["clipseg"],
           "class_image_steps": 2}
    base = dict(images_data_url=str(archive), photo_class="Woman", model_url=models["sdxl-base"],
                vae_url=models["sdxl-vae"], resolution_width=SIZE, resolution_height=SIZE,
                preprocessing=pre, with_prior_preservation=False)
    return PersonalizeRequest(**{**base, **fields}).to_config()


def test_generated_captions_masks_and_skipped_files(models, tmp_path):
    data = prepare(config(models, subject_zip(tmp_path / "a.zip", n=3)))
    assert data.pixels.shape == (3, SIZE, SIZE, 3) and data.pixels.dtype == np.uint8
    assert data.report["captions"] == "generated"
    assert data.report["skipped"] and data.report["skipped"][0]["file"].endswith("readme.txt")
    for caption in data.captions:  # the subject's tokens lead every generated caption
        assert caption.startswith("A photograph of a <s0><s1>")
    assert data.masks.shape == (3, SIZE // 8, SIZE // 8)
    bias = 0.001
    assert data.masks.min() >= bias - 1e-6 and data.masks.max() <= 1.0 + 1e-6
    assert data.class_pixels is None


def test_captions_file_in_the_archive_wins_and_token_is_replaced(models, tmp_path):
    captions = {"img_0.png": "TOK on a beach", "img_1.png": "TOK at night"}
    archive = subject_zip(tmp_path / "c.zip", n=2, captions=captions)
    data = prepare(config(models, archive))
    assert data.report["captions"] == "file"
    assert sorted(data.captions) == ["<s0><s1> at night", "<s0><s1> on a beach"]


def test_skip_caption_generation_uses_the_instance_prompt(models, tmp_path):
    data = prepare(config(models, subject_zip(tmp_path / "s.zip", n=2),
                          skip_caption_generation=True, instance_prompt="TOK, portrait"))
    assert data.captions == ["<s0><s1>, portrait"] * 2


@pytest.mark.parametrize("style", ["none", "normal", "invert"])
def test_prior_preservation_class_images_and_their_mask_style(models, tmp_path, style):
    data = prepare(config(models, subject_zip(tmp_path / "p.zip", n=2),
                          with_prior_preservation=True, class_image_mask_style=style,
                          skip_caption_generation=True,
                          preprocessing={"captioning_model": models["captioner"],
                                         "segmentation_model": models["clipseg"],
                                         "class_image_steps": 2, "num_class_images": 3}))
    assert data.class_pixels.shape == (3, SIZE, SIZE, 3)
    assert data.class_captions == ["a photo of a woman"] * 3
    assert data.class_masks.shape == (3, SIZE // 8, SIZE // 8)
    if style == "none":
        assert np.all(data.class_masks == 1.0)
    else:
        assert data.class_masks.std() > 0  # a real segmentation, not a constant


def test_debug_archives_hold_what_was_trained_on(models, tmp_path):
    data = prepare(config(models, subject_zip(tmp_path / "d.zip", n=2), debug_dataset=True,
                          debug_loss_masks=True, skip_caption_generation=True))
    with zipfile.ZipFile(io.BytesIO(data.debug_files["debug_dataset.zip"])) as zf:
        names = zf.namelist()
        lines = [json.loads(x) for x in zf.read("metadata.jsonl").decode().splitlines()]
        first = Image.open(io.BytesIO(zf.read(lines[0]["file_name"])))
    assert len([n for n in names if n.endswith(".png")]) == 2
    assert lines[0]["text"] == "A photograph of a <s0><s1>" and first.size == (SIZE, SIZE)
    with zipfile.ZipFile(io.BytesIO(data.debug_files["debug_masks.zip"])) as zf:
        mask = Image.open(io.BytesIO(zf.read(zf.namelist()[0])))
    assert mask.size == (SIZE // 8, SIZE // 8) and mask.mode == "L"


def test_data_uri_archive(models, tmp_path):
    raw = subject_zip(tmp_path / "u.zip", n=2).read_bytes()
    uri = "data:application/zip;base64," + base64.b64encode(raw).decode()
    data = prepare(config(models, uri, skip_caption_generation=True))
    assert len(data.pixels) == 2


def test_remote_callers_cannot_name_server_files(models, tmp_path):
    with pytest.raises(InvalidInput) as e:
        prepare(config(models, subject_zip(tmp_path / "l.zip", n=1)), allow_local=False)
    assert e.value.field == "images_data_url"


def test_archive_without_images_is_refused_naming_the_field(models, tmp_path):
    path = tmp_path / "empty.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("notes.txt", "no photos here")
    with pytest.raises(InvalidInput) as e:
        prepare(config(models, path))
    assert e.value.field == "images_data_url"
    assert "no usable image" in e.value.message and "notes.txt" in e.value.message

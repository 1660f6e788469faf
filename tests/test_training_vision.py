"""The trainer's vision aids on tiny random-weight models: BLIP captions and CLIPSeg loss masks.

Only the two roles these tests need are built (into a module tmp dir), so the test does not
wait on, or break with, every other tiny model. No Ray: plain pipeline calls.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genserve import tiny
from training.captions import DEFAULT_CAPTION_MODEL, Captioner
from training.masks import SubjectMasker, class_mask, save_mask_images

ROLES = ["captioner", "clipseg"]
SIZE = (12, 16)  # (height, width): non-square, so a swapped axis shows up


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return tiny.build(tmp_path_factory.mktemp("tiny-vision"), roles=ROLES)


@pytest.fixture(scope="module")
def captioner(models) -> Captioner:
    return Captioner(str(models["captioner"]), device="cpu")


@pytest.fixture(scope="module")
def masker(models) -> SubjectMasker:
    return SubjectMasker(str(models["clipseg"]), device="cpu")


def photos(n: int = 3) -> list[Image.Image]:
    """``n`` RGB noise images of different sizes, then a grayscale and an RGBA one (as user
    uploads come): ``n + 2`` in all."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40 + 8 * i, 56, 3), dtype=np.uint8))
              for i in range(n)]
    return images + [Image.new("L", (30, 20), 90), Image.new("RGBA", (24, 24), (200, 10, 10, 128))]


def _hashes(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir()) if p.name != "genserve_tiny.json"}


# -- tiny models -----------------------------------------------------------------------------

def test_builds_are_byte_identical(models, tmp_path):
    again = tiny.build(tmp_path, roles=ROLES)
    for role in ROLES:
        first, second = _hashes(models[role]), _hashes(again[role])
        assert "model.safetensors" in first, role
        assert first == second, role
        size = sum(p.stat().st_size for p in models[role].iterdir())
        assert size < 4 * 1024 * 1024, (role, size)


def test_default_caption_model_resolves_with_auto_classes():
    # Config-only: the production default's model_type must map to a captioning class.
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.for_model("blip")
    assert AutoModelForImageTextToText._model_mapping[type(config)].__name__ == (
        "BlipForConditionalGeneration")
    assert DEFAULT_CAPTION_MODEL == "Salesforce/blip-image-captioning-large"


# -- captions --------------------------------------------------------------------------------

def test_captions_are_clean_strings_one_per_image(captioner):
    images = photos()
    captions = captioner.caption(images, max_new_tokens=12, batch_size=2)
    assert type(captioner.model).__name__ == "BlipForConditionalGeneration"
    assert len(captions) == len(images)
    for text in captions:
        assert isinstance(text, str)
        assert text == text.strip() and "\n" not in text and "  " not in text
        assert not any(tok in text for tok in ("[DEC]", "[SEP]", "[PAD]", "[CLS]", "[UNK]"))
        # WordPiece joins "##" pieces, so words ≤ tokens generated.
        assert len(text.split()) <= 12
    assert captioner.caption([]) == []


def test_captions_are_deterministic_across_calls_loads_and_batches(models, captioner):
    images = photos()
    first = captioner.caption(images, max_new_tokens=8)
    assert captioner.caption(images, max_new_tokens=8) == first
    assert Captioner(str(models["captioner"]), device="cpu").caption(
        images, max_new_tokens=8) == first
    # Batching must not reorder or change captions.
    assert captioner.caption(images, max_new_tokens=8, batch_size=1) == first


@pytest.mark.parametrize("kwargs", [{"max_new_tokens": 0}, {"batch_size": 0}])
def test_caption_rejects_bad_arguments(captioner, kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        captioner.caption(photos(1), **kwargs)


# -- masks -----------------------------------------------------------------------------------

def test_masks_shape_dtype_range(masker):
    images = photos()
    masks = masker.masks(images, "head", size=SIZE, temperature=1.0, bias=0.001)
    assert masks.shape == (len(images), *SIZE) and masks.dtype == np.float32
    assert np.isfinite(masks).all()
    assert masks.min() >= 0.001 and masks.max() <= 1.0
    # Rescaled per image: every mask's peak is exactly 1.
    np.testing.assert_allclose(masks.max(axis=(1, 2)), 1.0, atol=1e-6)


def test_bias_is_the_floor(masker):
    images = photos(2)
    for bias in (0.0, 0.3, 1.0):
        # A low temperature drives background pixels to the floor itself.
        masks = masker.masks(images, "head", size=SIZE, temperature=0.01, bias=bias)
        assert masks.min() >= bias - 1e-6
        assert masks.min() == pytest.approx(bias, abs=1e-3)
    assert (masker.masks(images, "head", size=SIZE, temperature=1.0, bias=1.0) == 1.0).all()


def test_higher_temperature_smooths(masker):
    images = photos(2)
    spreads = [masker.masks(images, "head", size=SIZE, temperature=t, bias=0.0).std()
               for t in (0.1, 1.0, 10.0, 100.0)]
    assert all(a > b for a, b in itertools.pairwise(spreads)), spreads
    assert spreads[-1] < 0.05  # towards uniform weights: no mask at all


def test_prompt_changes_the_mask(masker):
    images = photos(2)
    head = masker.masks(images, "head", size=SIZE, temperature=1.0, bias=0.0)
    dog = masker.masks(images, "a dog", size=SIZE, temperature=1.0, bias=0.0)
    assert np.abs(head - dog).max() > 0.05


def test_masks_are_deterministic_and_batch_independent(masker):
    images = photos()
    kwargs = {"size": SIZE, "temperature": 1.0, "bias": 0.01}
    first = masker.masks(images, "head", **kwargs)
    np.testing.assert_array_equal(masker.masks(images, "head", **kwargs), first)
    np.testing.assert_allclose(masker.masks(images, "head", batch_size=1, **kwargs), first,
                               atol=1e-5)


@pytest.mark.parametrize("kwargs, field", [
    ({"temperature": 0.0}, "temperature"), ({"bias": 1.5}, "bias"), ({"bias": -0.1}, "bias"),
    ({"size": (0, 8)}, "size"), ({"prompt": " "}, "prompt"),
])
def test_masks_reject_bad_arguments(masker, kwargs, field):
    args = {"prompt": "head", "size": SIZE, "temperature": 1.0, "bias": 0.0, **kwargs}
    prompt = args.pop("prompt")
    with pytest.raises(ValueError, match=field):
        masker.masks(photos(1), prompt, **args)


# -- class-image masks -----------------------------------------------------------------------

def test_class_mask_styles(masker):
    bias = 0.2
    mask = masker.masks(photos(2), "head", size=SIZE, temperature=1.0, bias=bias)
    np.testing.assert_array_equal(class_mask(mask, "none", bias), np.ones_like(mask))
    np.testing.assert_array_equal(class_mask(mask, "normal", bias), mask)
    inverted = class_mask(mask, "invert", bias)
    assert inverted.dtype == np.float32 and inverted.shape == mask.shape
    assert inverted.min() >= bias - 1e-6 and inverted.max() <= 1.0
    np.testing.assert_allclose(inverted, 1.0 + bias - mask, atol=1e-6)
    # The subject's peak gets the floor, and inverting twice gives the mask back.
    peak = np.unravel_index(mask[0].argmax(), mask[0].shape)
    assert inverted[0][peak] == pytest.approx(bias, abs=1e-6)
    np.testing.assert_allclose(class_mask(inverted, "invert", bias), mask, atol=1e-6)


def test_class_mask_unknown_style_raises():
    with pytest.raises(ValueError, match="inverted"):
        class_mask(np.ones((2, 4, 4), np.float32), "inverted", 0.0)


# -- debug images ----------------------------------------------------------------------------

def test_save_mask_images(masker, tmp_path):
    masks = masker.masks(photos(1), "head", size=SIZE, temperature=1.0, bias=0.1)
    out = tmp_path / "debug" / "masks"
    names = ["../escape/me 1.jpg", "Photo #2.PNG", "me_1"]
    paths = save_mask_images(masks, names, out)
    assert len(paths) == 3 and len({p.name for p in paths}) == 3
    for path, mask in zip(paths, masks):
        assert path.parent == out and path.suffix == ".png" and path.exists()
        assert all(c.isalnum() or c in "._-" for c in path.stem)
        with Image.open(path) as img:
            assert img.mode == "L" and img.size == (SIZE[1], SIZE[0])
            pixels = np.asarray(img)
        np.testing.assert_array_equal(pixels, np.round(mask * 255).astype(np.uint8))


def test_save_mask_images_needs_one_name_per_mask(tmp_path):
    with pytest.raises(ValueError, match="names"):
        save_mask_images(np.ones((2, 4, 4), np.float32), ["only-one"], tmp_path)

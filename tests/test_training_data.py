"""Subject fine-tuning data: orientation, crops (center, random, face-aware), augmentation,
captions and tokens. Pure unit tests: images are drawn here, no Ray, no models."""

from __future__ import annotations

import io
import json
import random
import zipfile

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from genserve.archive import extract_images
from genserve.errors import InvalidInput
from training.data import (
    SubjectExample,
    apply_token,
    augment,
    caption_dropout,
    crop_and_resize,
    crop_around_box,
    crop_window,
    face_box,
    load_captions,
    load_subject_image,
    prepare_examples,
)

RED, BLUE = (255, 0, 0), (0, 0, 255)


def gradient(width: int, height: int) -> Image.Image:
    """Every pixel different, so any change of crop shows in the output."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                       (x + y) % 256], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8))


def with_face(size=(400, 240), center=(320, 120), scale=40) -> Image.Image:
    """A cartoon face OpenCV's frontal cascade detects: light oval, dark eyes and brows, a
    nose, a mouth, slightly blurred (verified, not assumed: see test_face_box_finds_...)."""
    canvas = Image.new("RGB", size, (40, 60, 90))
    d = ImageDraw.Draw(canvas)
    cx, cy, s = *center, scale
    d.ellipse([cx - s, cy - 1.3 * s, cx + s, cy + 1.3 * s], fill=(200, 170, 150))
    ey, ex, er = cy - 0.3 * s, 0.4 * s, 0.15 * s
    for sx in (-1, 1):
        d.ellipse([cx + sx * ex - er * 1.4, ey - er, cx + sx * ex + er * 1.4, ey + er],
                  fill=(30, 30, 30))
        d.rectangle([cx + sx * ex - er * 2, ey - 0.35 * s, cx + sx * ex + er * 2,
                     ey - 0.28 * s], fill=(60, 50, 40))
    d.polygon([(cx, ey), (cx - 0.12 * s, cy + 0.25 * s), (cx + 0.12 * s, cy + 0.25 * s)],
              fill=(150, 120, 100))
    d.ellipse([cx - 0.35 * s, cy + 0.5 * s, cx + 0.35 * s, cy + 0.65 * s], fill=(90, 40, 40))
    return canvas.filter(ImageFilter.GaussianBlur(2))


def contains(outer, inner) -> bool:
    return (outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2]
            and inner[3] <= outer[3])


# -- loading -----------------------------------------------------------------------------------

def test_exif_orientation_honoured(tmp_path):
    stored = Image.new("RGB", (40, 20), RED)
    stored.paste(BLUE, (20, 0, 40, 20))  # left red, right blue as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    stored.save(tmp_path / "phone.jpg", "JPEG", exif=exif, quality=95)
    image = load_subject_image(tmp_path / "phone.jpg")
    assert image.mode == "RGB" and image.size == (20, 40)
    top, bottom = np.asarray(image)[2, 10], np.asarray(image)[-3, 10]
    assert top[0] > 200 and top[2] < 60        # stored left (red) is now on top
    assert bottom[2] > 200 and bottom[0] < 60  # stored right (blue) at the bottom


def test_load_refuses_non_images_naming_the_field(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not an image")
    with pytest.raises(InvalidInput, match="x.png") as info:
        load_subject_image(tmp_path / "x.png")
    assert info.value.field == "images_data_url"


# -- cropping ----------------------------------------------------------------------------------

@pytest.mark.parametrize("source,target", [((97, 61), (64, 48)), ((30, 200), (64, 64)),
                                           ((640, 480), (48, 80)), ((64, 64), (64, 64))])
@pytest.mark.parametrize("center_crop", [True, False])
def test_output_size_exact(source, target, center_crop):
    out = crop_and_resize(gradient(*source), *target, center_crop=center_crop,
                          face_aware=True, offset_x=0.0, offset_y=0.0, rng=random.Random(0))
    assert out.size == target and out.mode == "RGB"


def test_center_crop_and_offsets():
    image = gradient(200, 100)
    kw = {"center_crop": True, "face_aware": False, "rng": random.Random(0)}
    assert crop_window(image, 64, 64, offset_x=0.0, offset_y=0.0, **kw) == (50, 0, 150, 100)
    assert crop_window(image, 64, 64, offset_x=-1.0, offset_y=0.0, **kw) == (0, 0, 100, 100)
    assert crop_window(image, 64, 64, offset_x=1.0, offset_y=1.0, **kw) == (100, 0, 200, 100)
    # 2:1 output from a 2:1 image: no slack, offsets change nothing.
    assert crop_window(image, 64, 32, offset_x=0.7, offset_y=-1.0, **kw) == (0, 0, 200, 100)
    with pytest.raises(ValueError, match="offset_x"):
        crop_window(image, 64, 64, offset_x=1.5, offset_y=0.0, **kw)


def test_random_crop_differs_from_center_and_is_seeded():
    image = gradient(200, 100)

    def crop(center_crop: bool, rng) -> np.ndarray:
        return np.asarray(crop_and_resize(image, 32, 32, center_crop=center_crop,
                                          face_aware=False, offset_x=0.0, offset_y=0.0,
                                          rng=rng))

    center = crop(True, random.Random(0))
    first, again = crop(False, random.Random(7)), crop(False, random.Random(7))
    assert not np.array_equal(first, center)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, crop(False, random.Random(8)))
    # numpy Generators work the same way.
    assert np.array_equal(crop(False, np.random.default_rng(3)),
                          crop(False, np.random.default_rng(3)))
    windows = {crop_window(image, 32, 32, center_crop=False, face_aware=False, offset_x=0.0,
                           offset_y=0.0, rng=random.Random(seed)) for seed in range(20)}
    assert len(windows) > 10 and all(w[2] - w[0] == 100 and 0 <= w[0] <= 100 for w in windows)


def test_face_box_finds_the_drawn_face_and_nothing_in_a_blank_image():
    box = face_box(with_face())
    assert box is not None
    assert contains(box, (300, 100, 340, 140))  # the eyes-nose-mouth core at (320, 120)
    assert face_box(Image.new("RGB", (300, 200), (128, 128, 128))) is None
    assert face_box(gradient(300, 200)) is None


def test_face_aware_crop_keeps_the_face_inside():
    image = with_face()  # 400×240, face on the right: a center crop cuts it off
    box = face_box(image)
    kw = {"offset_x": 0.0, "offset_y": 0.0, "rng": random.Random(0)}
    aware = crop_window(image, 64, 64, center_crop=True, face_aware=True, **kw)
    assert contains(aware, box)
    assert aware[2] - aware[0] == aware[3] - aware[1]  # square, as asked
    assert not contains(crop_window(image, 64, 64, center_crop=True, face_aware=False, **kw),
                        box)
    out = crop_and_resize(image, 64, 64, center_crop=True, face_aware=True, **kw)
    assert out.size == (64, 64)


def test_crop_around_box_math():
    image = Image.new("RGB", (400, 200))
    # Room to frame: 2× the 40-px face, centered on it.
    assert crop_around_box(image, (300, 50, 340, 90), 64, 64) == (280, 30, 360, 110)
    # Near the edge: shifted to stay inside, face still inside.
    assert crop_around_box(image, (360, 150, 400, 200), 64, 64) == (300, 100, 400, 200)
    # A tiny face is not blown up past what the output needs (64 px here).
    assert crop_around_box(image, (100, 100, 104, 104), 64, 64) == (70, 70, 134, 134)
    # Wide output around a face: aspect kept, never larger than the image.
    wide = crop_around_box(image, (180, 80, 220, 120), 128, 64)
    assert (wide[2] - wide[0]) == 2 * (wide[3] - wide[1]) and contains(wide, (180, 80, 220, 120))
    # A face bigger than the image allows after expanding: the whole fitting window.
    assert crop_around_box(image, (150, 10, 330, 190), 64, 64) == (140, 0, 340, 200)
    with pytest.raises(ValueError, match="inside"):
        crop_around_box(image, (390, 10, 410, 20), 64, 64)


# -- augmentation ------------------------------------------------------------------------------

def test_flip_is_seeded_and_about_half():
    image = gradient(32, 16)
    flipped = np.asarray(image)[:, ::-1]
    outcomes = []
    for seed in range(200):
        out = np.asarray(augment(image, random_flip=True, rotation_range=(0, 0),
                                 rng=random.Random(seed)))
        assert np.array_equal(out, flipped) or np.array_equal(out, np.asarray(image))
        outcomes.append(np.array_equal(out, flipped))
    assert 70 < sum(outcomes) < 130
    again = [np.array_equal(np.asarray(augment(image, random_flip=True, rotation_range=(0, 0),
                                               rng=random.Random(seed))), flipped)
             for seed in range(200)]
    assert again == outcomes
    assert np.array_equal(np.asarray(augment(image, random_flip=False, rotation_range=(0, 0),
                                             rng=random.Random(0))), np.asarray(image))


def test_rotation_seeded_size_kept_and_no_black_corners():
    image = gradient(48, 32)
    a = augment(image, random_flip=False, rotation_range=(-10, 10), rng=np.random.default_rng(5))
    b = augment(image, random_flip=False, rotation_range=(-10, 10), rng=np.random.default_rng(5))
    assert a.size == image.size and np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(image))
    flat = Image.new("RGB", (48, 32), (200, 180, 160))
    for fill in ("reflect", "edge"):
        out = np.asarray(augment(flat, random_flip=False, rotation_range=(15, 15),
                                 rng=random.Random(0), fill=fill)).astype(int)
        assert np.abs(out - [200, 180, 160]).max() <= 1  # corners filled from the image
    with pytest.raises(ValueError, match="rotation_range"):
        augment(image, random_flip=False, rotation_range=(5, -5), rng=random.Random(0))


# -- captions ----------------------------------------------------------------------------------

def write_lines(path, lines: list[str], bom: bool = False) -> None:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + "\n".join(lines).encode())


def test_load_captions(tmp_path):
    path = tmp_path / "metadata.jsonl"
    write_lines(path, [json.dumps({"file_name": "a.png", "text": "TOK smiling"}), "",
                       json.dumps({"file_name": "./sub/b.jpg", "text": "TOK at the beach",
                                   "extra": 1}), "   "], bom=True)
    assert load_captions(path, "text") == {"a.png": "TOK smiling", "sub/b.jpg": "TOK at the beach"}


@pytest.mark.parametrize("bad,phrase", [
    ("{not json", "not valid JSON"),
    ('["a.png", "x"]', "expected a JSON object"),
    ('{"text": "no name"}', "`file_name` must be a non-empty string"),
    ('{"file_name": "b.png"}', "'text' must be a string but is missing"),
    ('{"file_name": "b.png", "text": null}', "must be a string but is None"),
    ('{"file_name": "a.png", "text": "again"}', "already captioned on line 1"),
])
def test_bad_caption_line_names_field_and_line(tmp_path, bad, phrase):
    path = tmp_path / "c.jsonl"
    write_lines(path, [json.dumps({"file_name": "a.png", "text": "ok"}), "", bad])
    with pytest.raises(InvalidInput) as info:
        load_captions(path, "text")
    assert info.value.field == "captions_file_url"
    assert "line 3" in info.value.message and phrase in info.value.message


def test_bad_utf8_caption_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"file_name": "a.png", "text": "ok"}\n{"file_name": "\xff"}\n')
    with pytest.raises(InvalidInput, match="line 2: not valid UTF-8"):
        load_captions(path, "text")


def test_apply_token():
    tokens = ["<s0>", "<s1>"]
    assert apply_token("a photo of TOK", "TOK", tokens) == "a photo of <s0><s1>"
    assert apply_token("TOK and TOK's dog", "TOK", tokens) == "<s0><s1> and <s0><s1>'s dog"
    assert apply_token("TOKYO at night, MYTOK", "TOK", tokens) == "TOKYO at night, MYTOK"
    assert apply_token("a photo of sks", "sks", ["<s0>"]) == "a photo of <s0>"
    assert apply_token("no placeholder", "TOK", tokens) == "no placeholder"
    with pytest.raises(ValueError):
        apply_token("x", "TOK", [])


def test_caption_dropout_statistics_and_seed():
    rng = random.Random(0)
    dropped = sum(caption_dropout("a photo of TOK", 0.3, rng) == "" for _ in range(10_000))
    assert 2800 < dropped < 3200
    assert all(caption_dropout("c", 0.0, rng) == "c" for _ in range(1000))
    assert all(caption_dropout("c", 1.0, rng) == "" for _ in range(1000))
    for make in (random.Random, np.random.default_rng):
        runs = []
        for _ in range(2):
            r = make(4)
            runs.append([caption_dropout("c", 0.5, r) for _ in range(50)])
        assert runs[0] == runs[1] and 10 < runs[0].count("") < 40
    with pytest.raises(ValueError):
        caption_dropout("c", 1.5, rng)


# -- examples ----------------------------------------------------------------------------------

def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def report(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("photos/a.png", png(gradient(80, 60)))
        zf.writestr("photos/b.png", png(gradient(60, 80)))
        zf.writestr("other/a.png", png(gradient(64, 64)))  # extracted as a-1.png
        zf.writestr("photos/metadata.jsonl",
                    json.dumps({"file_name": "a.png", "text": "TOK in a hat"}) + "\n"
                    + json.dumps({"file_name": "other/a.png", "text": "TOK outside"}) + "\n")
    return extract_images(buf.getvalue(), tmp_path / "images")


def test_prepare_examples(report):
    captions = load_captions(report.captions_file, "text")
    kw = {"width": 64, "height": 48, "center_crop": True, "face_aware": False,
          "offset_x": 0.0, "offset_y": 0.0, "captions": captions, "token_abstraction": "TOK",
          "new_tokens": ["<s0>", "<s1>"], "rng": random.Random(0)}
    examples = prepare_examples(report, instance_prompt="a photo of TOK", **kw)
    assert [e.file_name for e in examples] == ["a.png", "b.png", "a-1.png"]
    assert all(isinstance(e, SubjectExample) for e in examples)
    assert [e.caption for e in examples] == ["<s0><s1> in a hat", "a photo of <s0><s1>",
                                             "<s0><s1> outside"]
    for e in examples:
        assert e.pixels.shape == (48, 64, 3) and e.pixels.dtype == np.uint8
    assert examples[0].original_size == (60, 80) and examples[0].crop_top_left == (0, 0)
    # b.png is 60×80 (portrait): a 60×45 window 18 px down, scaled ×64/60.
    assert examples[1].original_size == (80, 60) and examples[1].crop_top_left == (19, 0)
    with pytest.raises(InvalidInput, match="no caption for 'photos/b.png'") as info:
        prepare_examples(report, instance_prompt=None, **kw)
    assert info.value.field == "captions_file_url"
    # A bare name matches only when it is unambiguous: two images are called a.png here.
    ambiguous = prepare_examples(report, instance_prompt="TOK", **{**kw, "captions": {
        "a.png": "TOK in a hat", "b.png": "TOK b"}})
    assert [e.caption for e in ambiguous] == ["<s0><s1> in a hat", "<s0><s1> b", "<s0><s1>"]
    kw["captions"] = {}
    with pytest.raises(InvalidInput) as info:
        prepare_examples(report, instance_prompt=None, **kw)
    assert info.value.field == "instance_prompt"


def test_center_crop_jitter_is_bounded_in_output_pixels():
    from training.data import crop_window

    # 200×100 source, 50×50 output: a center crop is the 100×100 middle (75..175), 2 source
    # pixels per output pixel, so ±10 output pixels is ±20 source pixels around left=50.
    image = Image.new("RGB", (200, 100))
    rng = random.Random(0)
    lefts = {crop_window(image, 50, 50, center_crop=True, face_aware=False, offset_x=0.0,
                         offset_y=0.0, rng=rng, jitter=(10, 0))[0] for _ in range(200)}
    assert min(lefts) >= 30 and max(lefts) <= 70 and len(lefts) > 10
    plain = crop_window(image, 50, 50, center_crop=True, face_aware=False, offset_x=0.0,
                        offset_y=0.0, rng=rng)
    assert plain == (50, 0, 150, 100)

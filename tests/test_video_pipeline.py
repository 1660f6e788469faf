"""Image-to-video without Ray: the tiny SVD, MP4 encoding and the video schemas.
(Tier b for the pipeline: tiny model, 64 px, 3 frames, 2 steps; tier a for the schemas.)"""

from __future__ import annotations

import base64
import io
import struct
import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from genserve.errors import InvalidInput, PipelineBroken
from genserve.pipelines.video import VideoParams, VideoResult, encode_mp4
from genserve.schemas.common import FieldError
from genserve.schemas.video import MAX_VIDEO_PIXELS, TextToVideoRequest, VideoRequest, VideoResponse
from tests.util import b64_png

SMALL = dict(width=64, height=64, num_frames=3, num_inference_steps=2, fps=8)


def gradient(width: int = 80, height: int = 48) -> Image.Image:
    """A non-square input, so the resize/center-crop path runs."""
    x = np.linspace(0, 255, width, dtype=np.uint8)
    y = np.linspace(0, 255, height, dtype=np.uint8)
    rgb = np.stack([np.tile(x, (height, 1)), np.tile(y[:, None], (1, width)),
                    np.full((height, width), 90, np.uint8)], axis=-1)
    return Image.fromarray(rgb)


@pytest.fixture(scope="module")
def svd(tmp_path_factory):
    from genserve.pipelines.video import SVDPipeline
    from genserve.tiny.video import build_svd

    directory = tmp_path_factory.mktemp("tiny-svd")
    build_svd(directory)
    assert (directory / "unet" / "diffusion_pytorch_model.fp16.safetensors").exists()
    return SVDPipeline(str(directory))


@pytest.fixture(scope="module")
def video(svd) -> VideoResult:
    return svd.generate(VideoParams(gradient(), seed=5, **SMALL))


# --- pipeline ---------------------------------------------------------------------------------

def test_loads_on_cpu_in_fp32(svd):
    import torch

    assert svd.placement.device.type == "cpu" and svd.placement.dtype == torch.float32
    assert svd._pipe.vae_scale_factor == 8  # like the real SVD VAE
    svd.check_health()


def test_fp16_variant_loads_as_on_cuda(svd):
    """The CUDA path asks for `variant="fp16"` in float16; the tiny build must ship it.
    (Loaded only: fp16 kernels on CPU are slow or missing.)"""
    import torch

    from genserve.pipelines.video import SVDPipeline

    half = SVDPipeline(svd.model_id, device="cpu", dtype="float16")
    assert {half._pipe.unet.dtype, half._pipe.vae.dtype, half._pipe.image_encoder.dtype} == {
        torch.float16}


def test_frames_shape_and_metadata(video):
    assert len(video.frames) == 3
    assert all(f.shape == (64, 64, 3) and f.dtype == np.uint8 for f in video.frames)
    assert (video.fps, video.seed, video.size) == (8, 5, (64, 64))
    assert set(video.timings) == {"video"}


def test_same_seed_same_frames_and_fps_conditioning(svd, video, monkeypatch):
    seen = []
    original = svd._pipe._get_add_time_ids
    monkeypatch.setattr(svd._pipe, "_get_add_time_ids",
                        lambda fps, *a: seen.append(fps) or original(fps, *a))
    again = svd.generate(VideoParams(gradient(), seed=5, **SMALL))
    assert all((a == b).all() for a, b in zip(video.frames, again.frames))
    assert seen == [SMALL["fps"] - 1]  # SVD is conditioned on fps − 1


def test_other_seed_other_frames_and_step_callback(svd, video):
    steps = []
    other = svd.generate(VideoParams(gradient(), seed=6, **SMALL),
                         on_step=lambda step, total: steps.append((step, total)))
    assert not all((a == b).all() for a, b in zip(video.frames, other.frames))
    assert steps == [(1, 2), (2, 2)]


def test_check_inputs_names_the_argument(svd):
    for overrides, field in [({"width": 60}, "width"), ({"num_frames": 0}, "num_frames"),
                             ({"min_guidance_scale": 4.0}, "min_guidance_scale")]:
        with pytest.raises(InvalidInput) as info:
            svd.generate(VideoParams(gradient(), **{**SMALL, **overrides}))
        assert info.value.field == field


def test_health_check_catches_nan_weights_and_fatal_errors(svd):
    import torch

    bias = svd._pipe.vae.decoder.conv_out.bias
    saved = bias.detach().clone()
    with torch.no_grad():
        bias.fill_(float("nan"))
    try:
        with pytest.raises(PipelineBroken, match="non-finite"):
            svd.check_health()
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    svd.check_health()
    with svd._lock:  # a video in progress: the probe is skipped, not queued behind it
        svd.check_health()
    svd.health.record(RuntimeError("CUDA error: an illegal memory access was encountered"))
    try:
        with pytest.raises(PipelineBroken):
            svd.check_health()
    finally:
        svd.health.broken = None


# --- MP4 --------------------------------------------------------------------------------------

def top_level_boxes(data: bytes) -> list[str]:
    """MP4 box types in file order (each box: 4-byte big-endian size, 4-byte type)."""
    boxes, offset = [], 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset:offset + 8])
        if size == 1:  # 64-bit size follows the type
            size = struct.unpack(">Q", data[offset + 8:offset + 16])[0]
        boxes.append(kind.decode("latin-1"))
        if size < 8:
            break
        offset += size
    return boxes


def test_mp4_is_h264_with_exact_frames_and_rate(video):
    mp4 = video.to_mp4()
    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert (stream.width, stream.height) == (64, 64)
        assert stream.average_rate == SMALL["fps"]
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(decoded) == len(video.frames) == SMALL["num_frames"]
    boxes = top_level_boxes(mp4)
    assert boxes[0] == "ftyp" and boxes.index("moov") < boxes.index("mdat")  # faststart


def test_mp4_crops_odd_sizes_to_even():
    frames = [np.full((33, 35, 3), v, np.uint8) for v in (0, 128, 255)]
    with av.open(io.BytesIO(encode_mp4(frames, fps=30))) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height, stream.average_rate) == (34, 32, 30)
        assert sum(1 for _ in container.decode(stream)) == 3
    with pytest.raises(ValueError, match="empty"):
        encode_mp4([], fps=7)


def test_json_response_carries_the_mp4(video):
    mp4 = video.to_mp4()
    body = VideoResponse.from_result(video, mp4)
    assert body.video.url.startswith("data:video/mp4;base64,")
    assert base64.b64decode(body.video.url.split(",", 1)[1]) == mp4
    assert (body.video.file_size, body.video.content_type) == (len(mp4), "video/mp4")
    assert (body.num_frames, body.fps, body.width, body.height, body.seed) == (3, 8, 64, 64, 5)


# --- schemas ----------------------------------------------------------------------------------

def field_of(exc: ValidationError) -> str:
    err = exc.errors()[0]
    cause = (err.get("ctx") or {}).get("error")
    return cause.field if isinstance(cause, FieldError) else err["loc"][-1]


PNG = b64_png(np.zeros((40, 60, 3), np.uint8))


def test_video_request_defaults_and_inline_images():
    r = VideoRequest(image=PNG)
    assert (r.width, r.height, r.num_frames, r.fps, r.motion_bucket_id) == (1024, 576, 14, 7, 127)
    assert (r.num_inference_steps, r.min_guidance_scale, r.max_guidance_scale) == (25, 1.0, 3.0)
    assert (r.noise_aug_strength, r.decode_chunk_size, r.seed) == (0.02, 8, 42)
    assert r.response_format == "mp4" and r.image_url is None
    assert r.init_image.size == (60, 40)
    assert VideoRequest(image="data:image/png;base64," + PNG).init_image.size == (60, 40)
    p = r.to_params(r.init_image)
    assert (p.width, p.height, p.num_frames, p.seed) == (1024, 576, 14, 42)


def test_video_request_keeps_http_urls_for_the_fetcher():
    r = VideoRequest(image="https://example.com/rocket.png")
    assert r.image_url == "https://example.com/rocket.png" and r.init_image is None


@pytest.mark.parametrize("overrides,field", [
    ({"num_frames": 0}, "num_frames"),
    ({"num_frames": 26}, "num_frames"),
    ({"image": base64.b64encode(b"plain text, not an image").decode()}, "image"),
    ({"image": "!!! not base64 !!!"}, "image"),
    ({"image": "data:text/plain,hello"}, "image"),
    ({"image": "ftp://example.com/rocket.png"}, "image"),
    ({"image": "file:///etc/passwd"}, "image"),
    ({"image": "https://"}, "image"),
    ({"min_guidance_scale": 3.5, "max_guidance_scale": 3.0}, "min_guidance_scale"),
    ({"width": 100}, "width"),
    ({"fps": 31}, "fps"),
    ({"num_frames": 25, "width": 1024, "height": 1024}, "num_frames"),  # pixel cap
    ({"num_inference_step": 10}, "num_inference_step"),  # misspelt: refused, not ignored
])
def test_video_request_bad_inputs_name_the_field(overrides, field):
    with pytest.raises(ValidationError) as info:
        VideoRequest(**{"image": PNG, **overrides})
    assert field_of(info.value) == field


def test_pixel_cap_allows_native_svd_xt_shapes():
    assert MAX_VIDEO_PIXELS == 25 * 1024 * 576
    VideoRequest(image=PNG, num_frames=25, width=1024, height=576)
    VideoRequest(image=PNG, num_frames=25, width=576, height=1024)


def test_text_to_video_shares_the_video_fields():
    r = TextToVideoRequest(prompt="a rocket", num_frames=5, fps=10, seed=3)
    assert (r.image_num_inference_steps, r.image_guidance_scale) == (30, 5.0)
    first = r.image_params()
    assert (first.prompt, first.width, first.height, first.steps, first.seed) == (
        "a rocket", 1024, 576, 30, 3)
    p = r.to_params(Image.new("RGB", (8, 8)))
    assert (p.num_frames, p.fps, p.seed) == (5, 10, 3)
    with pytest.raises(ValidationError) as info:
        TextToVideoRequest(prompt="x", min_guidance_scale=5, max_guidance_scale=1)
    assert field_of(info.value) == "min_guidance_scale"
    with pytest.raises(ValidationError) as info:
        TextToVideoRequest(prompt="x", image="https://example.com/a.png")
    assert field_of(info.value) == "image"


def test_imports_stay_cheap():
    code = ("import sys, genserve.pipelines.video, genserve.schemas.video; "
            "print(sorted(m for m in ('torch', 'av', 'diffusers', 'transformers') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"

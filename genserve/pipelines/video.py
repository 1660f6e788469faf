"""Stable Video Diffusion: one image in, a short video out, encoded as H.264 MP4.

No Ray in here, and no torch, diffusers or PyAV at import time: the HTTP ingress imports
`VideoParams`/`VideoResult`/`encode_mp4` cheaply; the heavy imports happen in
`SVDPipeline.__init__` (the replica's preload) and in `encode_mp4`.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from genserve.errors import InvalidInput, Unavailable
from genserve.pipelines.outputs import step_callback, to_uint8

log = logging.getLogger(__name__)

VAE_SCALE = 8  # SVD's VAE downsamples 8×; pixel sizes must divide by it
# libx264's constant-quality setting (0 lossless … 51 worst; its default is 23): 18 is the
# usual "visually lossless" choice. File size then follows motion and detail, not a bitrate.
MP4_CRF = 18


@dataclass
class VideoParams:
    """One image-to-video call; defaults are SVD img2vid's own (14 frames of 1024×576)."""

    image: Image.Image
    width: int = 1024
    height: int = 576
    num_frames: int = 14
    fps: int = 7
    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.02
    decode_chunk_size: int = 8
    num_inference_steps: int = 25
    min_guidance_scale: float = 1.0
    max_guidance_scale: float = 3.0
    seed: int = 42


@dataclass
class VideoResult:
    """Frames as uint8 HWC arrays, and the rate they were conditioned on and play at."""

    frames: list[np.ndarray]
    fps: int
    seed: int | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        height, width = self.frames[0].shape[:2]
        return width, height

    def to_mp4(self) -> bytes:
        """The frames as a browser-playable H.264 MP4 (see `encode_mp4`)."""
        return encode_mp4(self.frames, self.fps)


def encode_mp4(frames: list[np.ndarray], fps: int, *, crf: int = MP4_CRF) -> bytes:
    """uint8 HWC RGB frames → H.264 (libx264, yuv420p) in an MP4 whose `moov` atom comes first.

    yuv420p and a leading `moov` (``+faststart``) are what browsers need to start playing
    before the whole file arrives. yuv420p halves chroma resolution, so an odd width or height
    loses its last column/row. Every frame gets pts = index in a 1/fps time base, so the file
    reads back with exactly ``len(frames)`` frames at ``fps``.

    >>> mp4 = encode_mp4([np.zeros((64, 64, 3), np.uint8)] * 7, fps=7)
    >>> mp4[4:8]
    b'ftyp'
    """
    # ValueError, not InvalidInput: requests are validated long before this; reaching here
    # with such values is a bug in the caller (HTTP 500), not the user's fault.
    if not frames:
        raise ValueError("`frames` is empty; an MP4 needs at least one frame.")
    if fps < 1:
        raise ValueError(f"`fps` must be at least 1 but is {fps}.")
    height, width = frames[0].shape[:2]
    width, height = width - width % 2, height - height % 2
    if width < 2 or height < 2:
        raise ValueError(f"frames of {frames[0].shape[1]}×{frames[0].shape[0]} are too small "
                         "for H.264 (2×2 at least).")
    # Faststart makes the muxer reopen its output by name to move `moov` forward, which an
    # in-memory buffer cannot do: write a temporary file and read it back.
    with tempfile.TemporaryDirectory(prefix="genserve-mp4-") as tmp:
        path = Path(tmp) / "video.mp4"
        _write_mp4(path, frames, fps, width, height, crf)
        return path.read_bytes()


def _write_mp4(path: Path, frames: list[np.ndarray], fps: int, width: int, height: int,
               crf: int) -> None:
    import av

    with av.open(str(path), mode="w", format="mp4",
                 options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.options = {"crf": str(crf)}
        for index, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(pixels[:height, :width, :3]), format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))  # flush the encoder's delayed (B-)frames


class SVDPipeline:
    """Loads SVD once; `generate` turns one image into frames.

    >>> svd = SVDPipeline("stabilityai/stable-video-diffusion-img2vid")  # doctest: +SKIP
    >>> video = svd.generate(VideoParams(Image.open("rocket.png")))  # doctest: +SKIP
    >>> len(video.frames), video.frames[0].shape  # doctest: +SKIP
    (14, (576, 1024, 3))
    >>> open("rocket.mp4", "wb").write(video.to_mp4())  # doctest: +SKIP
    """

    def __init__(self, model_id: str, *, revision: str | None = None, device: str = "auto",
                 dtype: str = "auto"):
        import torch
        from diffusers import StableVideoDiffusionPipeline

        from genserve.pipelines.loading import HealthState, Placement

        self.placement = Placement.resolve(device, dtype)
        self.model_id = model_id
        started = time.perf_counter()
        try:
            pipe = StableVideoDiffusionPipeline.from_pretrained(
                model_id, **self.placement.from_pretrained_kwargs(revision))
            pipe.to(self.placement.device)
        except torch.OutOfMemoryError as exc:
            raise Unavailable(f"out of GPU memory loading {model_id}") from exc
        pipe.set_progress_bar_config(disable=True)
        self._pipe = pipe
        # One video at a time: a call saturates a GPU anyway, and with an fp16 VAE the
        # pipeline casts the shared VAE to fp32 and back mid-call (`force_upcast`), which a
        # concurrent call would see half-done. The scheduler's step state is shared too.
        self._lock = threading.Lock()
        self.health = HealthState()
        self.load_seconds = time.perf_counter() - started
        log.info("loaded %s on %s/%s in %.1fs", model_id, self.placement.device,
                 self.placement.dtype, self.load_seconds)

    def check_health(self) -> None:
        """Decode one 8×8 latent frame and require finite pixels (`loading.probe_vae`).

        While a video is being made the probe is skipped rather than queued: it would wait
        behind a call that can take minutes and fail Serve's health-check timeout, and the
        running call exercises the device anyway (a fatal error in it is recorded)."""
        from genserve.pipelines.loading import probe_vae

        self.health.raise_if_broken()
        if not self._lock.acquire(blocking=False):
            return
        try:
            probe_vae(self._pipe.vae, self.placement, num_frames=1)
        finally:
            self._lock.release()

    def check_inputs(self, p: VideoParams) -> None:
        """Values the schema already bounds, checked again for callers that skip it (the
        text-to-video chain, scripts); messages name the argument and its value."""
        if p.width % VAE_SCALE or p.height % VAE_SCALE:
            raise InvalidInput(f"`height` and `width` have to be divisible by {VAE_SCALE} but "
                               f"are {p.height} and {p.width}.", "width")
        for name in ("num_frames", "fps", "num_inference_steps", "decode_chunk_size"):
            if getattr(p, name) < 1:
                raise InvalidInput(f"`{name}` must be at least 1 but is {getattr(p, name)}.",
                                   name)
        if p.min_guidance_scale > p.max_guidance_scale:
            raise InvalidInput(f"`min_guidance_scale` ({p.min_guidance_scale}) must not exceed "
                               f"`max_guidance_scale` ({p.max_guidance_scale}).",
                               "min_guidance_scale")

    def generate(self, p: VideoParams, on_step=None) -> VideoResult:
        """Run one request. The image is scaled to cover (width, height) and center-cropped,
        so it is never distorted. ``on_step(step, total)`` is called after each step."""
        import torch

        from genserve.device import cpu_generator

        self.health.raise_if_broken()
        self.check_inputs(p)
        image = ImageOps.fit(p.image.convert("RGB"), (p.width, p.height),
                             Image.Resampling.LANCZOS)
        kwargs = dict(
            image=image, width=p.width, height=p.height, num_frames=p.num_frames,
            num_inference_steps=p.num_inference_steps, min_guidance_scale=p.min_guidance_scale,
            max_guidance_scale=p.max_guidance_scale,
            fps=p.fps,  # the pipeline conditions on fps − 1, as SVD was trained
            motion_bucket_id=p.motion_bucket_id, noise_aug_strength=p.noise_aug_strength,
            decode_chunk_size=p.decode_chunk_size, generator=cpu_generator(p.seed),
            output_type="np",
        )
        if on_step is not None:
            kwargs["callback_on_step_end"] = step_callback(on_step)
        with self.health.guard(f"out of GPU memory for {p.num_frames} frames of "
                                f"{p.width}×{p.height}; retry later or ask for fewer/smaller "
                                "frames or a smaller `decode_chunk_size`"):
            with self._lock, torch.inference_mode():
                started = time.perf_counter()  # model time, not time queued behind the lock
                frames = self._pipe(**kwargs).frames[0]
                seconds = time.perf_counter() - started
        return VideoResult(to_uint8(frames), p.fps, p.seed, {"video": seconds})


"""Video requests and responses: image-to-video (Stable Video Diffusion) and text-to-video
(SDXL base draws the first frame, then SVD animates it).

Both requests share the video fields through `VideoOptions`. Defaults are SVD img2vid's own:
14 frames of 1024×576 at 7 fps, 25 steps, guidance ramping 1.0 → 3.0 from first to last frame.
"""

from __future__ import annotations

import base64
from typing import Literal
from urllib.parse import urlsplit

from PIL import Image
from pydantic import Field, PrivateAttr, model_validator

from genserve.images import MAX_ENCODED_BYTES, ImageDecodeError, decode_base64_image
from genserve.pipelines.params import BaseParams
from genserve.pipelines.video import VideoParams, VideoResult
from genserve.schemas.common import FieldError, File, StrictModel

MIN_SIDE, MAX_SIDE = 64, 1024
MAX_FRAMES = 25  # SVD img2vid-xt's length; img2vid was trained on 14
# Memory and time grow with frames × pixels. The cap is SVD-XT's native shape, 25 frames of
# 1024×576 (14 745 600 pixels): both 16:9 and 9:16 fit at full length, 25 frames at 1024²
# do not (cut to 14 frames, 14 680 064 pixels, they do).
MAX_VIDEO_PIXELS = 25 * 1024 * 576
MAX_PROMPT_CHARS = 2000
MAX_URL_CHARS = 2048
# Base64 of the largest image `decode_base64_image` accepts, plus room for a data-URI prefix.
MAX_IMAGE_CHARS = MAX_ENCODED_BYTES * 4 // 3 + 64
ResponseFormat = Literal["mp4", "json"]


class VideoOptions(StrictModel):
    """The fields every video request shares (size, length, motion, sampling, output)."""

    width: int = Field(1024, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8,
                       description="Video width in pixels, a multiple of 8. The input image "
                       "is scaled to cover it and center-cropped.", examples=[1024])
    height: int = Field(576, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8,
                        description="Video height in pixels, a multiple of 8.", examples=[576])
    num_frames: int = Field(
        14, ge=1, le=MAX_FRAMES, description=f"Frames to generate (1–{MAX_FRAMES}); frames × "
        f"width × height is capped at {MAX_VIDEO_PIXELS} pixels.", examples=[14])
    fps: int = Field(7, ge=1, le=30, description="Frames per second: conditions the motion "
                     "(SVD was trained on fps − 1) and sets the MP4's frame rate.", examples=[7])
    motion_bucket_id: int = Field(127, ge=1, le=255, description="Amount of motion: higher "
                                  "moves more.", examples=[127])
    noise_aug_strength: float = Field(
        0.02, ge=0.0, le=1.0, allow_inf_nan=False, description="Noise added to the input "
        "image: more noise follows the image less closely and moves more.", examples=[0.02])
    decode_chunk_size: int = Field(
        8, ge=1, le=MAX_FRAMES, description="Frames the VAE decodes at once: higher is more "
        "temporally consistent and uses more GPU memory.", examples=[8])
    num_inference_steps: int = Field(25, ge=1, le=50, description="Denoising steps.",
                                     examples=[25])
    min_guidance_scale: float = Field(
        1.0, ge=0.0, le=20.0, allow_inf_nan=False, description="Guidance on the first frame; "
        "it ramps linearly to `max_guidance_scale` on the last.", examples=[1.0])
    max_guidance_scale: float = Field(
        3.0, ge=0.0, le=20.0, allow_inf_nan=False, description="Guidance on the last frame "
        "(at least `min_guidance_scale`).", examples=[3.0])
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Random seed: the same seed and "
                      "parameters give the same frames.", examples=[42])
    response_format: ResponseFormat = Field(
        "mp4", description='"mp4": the body is the video (`video/mp4`, H.264). "json": a '
        "`VideoResponse` whose `video.url` holds the file.", examples=["mp4"])

    @model_validator(mode="after")
    def _check_video(self) -> "VideoOptions":
        if self.min_guidance_scale > self.max_guidance_scale:
            raise FieldError("min_guidance_scale", f"`min_guidance_scale` "
                             f"({self.min_guidance_scale}) must not exceed `max_guidance_scale` "
                             f"({self.max_guidance_scale})")
        total = self.num_frames * self.width * self.height
        if total > MAX_VIDEO_PIXELS:
            raise FieldError("num_frames", f"{self.num_frames} frames of {self.width}×"
                             f"{self.height} = {total} pixels; the limit is {MAX_VIDEO_PIXELS}")
        return self

    def to_params(self, image: Image.Image) -> VideoParams:
        """The pipeline's parameters, animating ``image`` (fetched, decoded or generated)."""
        return VideoParams(
            image=image, width=self.width, height=self.height, num_frames=self.num_frames,
            fps=self.fps, motion_bucket_id=self.motion_bucket_id,
            noise_aug_strength=self.noise_aug_strength, decode_chunk_size=self.decode_chunk_size,
            num_inference_steps=self.num_inference_steps,
            min_guidance_scale=self.min_guidance_scale,
            max_guidance_scale=self.max_guidance_scale, seed=self.seed)


class VideoRequest(VideoOptions):
    """`POST /video`: animate one image with Stable Video Diffusion."""

    image: str = Field(
        min_length=1, max_length=MAX_IMAGE_CHARS,
        description="The first frame: an http(s) URL, a `data:image/...;base64,` URI, or raw "
        "base64 (PNG, JPEG or WebP).", examples=["https://example.com/rocket.png"])

    _image: Image.Image | None = PrivateAttr(None)
    _url: str | None = PrivateAttr(None)

    @property
    def image_url(self) -> str | None:
        """The http(s) URL to fetch, or None when the image came inline."""
        return self._url

    @property
    def init_image(self) -> Image.Image | None:
        """The decoded inline image, or None when it must be fetched from `image_url`."""
        return self._image

    @model_validator(mode="after")
    def _check_image(self) -> "VideoRequest":
        value = self.image.strip()
        scheme = urlsplit(value).scheme.lower() if "://" in value[:16] else ""
        if scheme in ("http", "https"):
            # Only the shape is checked here; fetching (and refusing private addresses) is
            # the ingress's fetcher's job.
            if len(value) > MAX_URL_CHARS:
                raise FieldError("image", f"`image` URL is {len(value)} characters; the limit "
                                 f"is {MAX_URL_CHARS}")
            if not urlsplit(value).hostname:
                raise FieldError("image", f"`image` URL {value[:80]!r} has no host")
            self._url = value
            return self
        if scheme:
            raise FieldError("image", f"`image` URL scheme {scheme!r} is not allowed; send an "
                             "http(s) URL, a data:image/...;base64, URI or base64")
        if value[:5].lower() == "data:" and ";base64," not in value[:128].lower():
            raise FieldError("image", "`image` data URI must be base64-encoded "
                             "(data:image/png;base64,...)")
        try:
            self._image = decode_base64_image(value)
        except ImageDecodeError as exc:
            raise FieldError("image", f"`image` is unusable: {exc}") from None
        return self


class TextToVideoRequest(VideoOptions):
    """`POST /text-to-video`: SDXL base draws the first frame at the video's size from the
    prompt, then SVD animates it. ``seed`` seeds both stages."""

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS,
                        description="What the first frame shows.",
                        examples=["A rocket lifting off at dawn"])
    negative_prompt: str | None = Field(
        None, max_length=MAX_PROMPT_CHARS, description="What the first frame steers away "
        "from.", examples=["blurry, low quality"])
    image_num_inference_steps: int = Field(30, ge=1, le=100, description="SDXL denoising "
                                           "steps for the first frame.", examples=[30])
    image_guidance_scale: float = Field(
        5.0, ge=0.0, le=30.0, allow_inf_nan=False, description="SDXL classifier-free "
        "guidance for the first frame (≤ 1 disables guidance).", examples=[5.0])

    def image_params(self) -> BaseParams:
        """SDXL base's parameters for the first frame."""
        return BaseParams(prompt=self.prompt, negative_prompt=self.negative_prompt,
                          height=self.height, width=self.width,
                          steps=self.image_num_inference_steps,
                          guidance_scale=self.image_guidance_scale, seed=self.seed)


class VideoResponse(StrictModel):
    """The `response_format: "json"` answer."""

    video: File = Field(description="The H.264 MP4.")
    num_frames: int = Field(ge=1, description="Frames in the video.", examples=[14])
    fps: int = Field(ge=1, description="Frames per second.", examples=[7])
    width: int = Field(ge=1, description="Width in pixels.", examples=[1024])
    height: int = Field(ge=1, description="Height in pixels.", examples=[576])
    seed: int = Field(ge=0, description="The seed used.", examples=[42])
    timings: dict[str, float] = Field(
        description="Seconds per stage (image, video, encode) and `total` at the ingress.",
        examples=[{"video": 41.2, "encode": 0.3}])

    @classmethod
    def from_result(cls, result: VideoResult, mp4: bytes, *, url: str | None = None,
                    file_name: str = "video.mp4",
                    timings: dict[str, float] | None = None) -> "VideoResponse":
        """Describe ``mp4`` (made from ``result``); without a storage ``url`` it goes inline."""
        url = url or "data:video/mp4;base64," + base64.b64encode(mp4).decode("ascii")
        width, height = result.size
        return cls(video=File(url=url, content_type="video/mp4", file_name=file_name,
                              file_size=len(mp4)),
                   num_frames=len(result.frames), fps=result.fps, width=width, height=height,
                   seed=result.seed, timings=timings if timings is not None else result.timings)

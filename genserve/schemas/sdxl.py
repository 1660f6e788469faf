"""The SDXL request and response: DataCrunch's SDXL 1.0 endpoint, field for field.

Generation modes (DataCrunch's rules):
- base only: ``refiner=false``, ``is_ensemble=false``;
- ensemble of experts: ``is_ensemble=true`` (the base runs ``steps × (1 − refiner_ratio)``
  steps and hands its latents to the refiner for the rest; ``refiner`` is then ignored);
- two-step: ``refiner=true``, ``is_ensemble=false`` (base denoises fully, the refiner runs
  image-to-image with its own steps, guidance and ``refiner_strength``).
A ``seed_image`` turns the base stage into image-to-image in any mode.
"""

from __future__ import annotations

import math
from typing import Literal

from PIL import Image
from pydantic import Field, PrivateAttr, model_validator

from genserve.images import MAX_ENCODED_BYTES, ImageDecodeError, decode_base64_image
from genserve.lora_format import LORA_ID_PATTERN
from genserve.repro import Reproducibility
from genserve.schemas.common import FieldError, ImageOut, StrictModel

SchedulerName = Literal["DDIM", "K_EULER", "EulerA", "DPMSolverMultistep", "KarrasDPM", "PNDM",
                        "HeunDiscrete"]
TimestepSpacing = Literal["linspace", "trailing", "leading"]

# SDXL's training buckets (width × height): sizes the model composes best at.
ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024), "16:9": (1344, 768), "9:16": (768, 1344), "4:3": (1152, 896),
    "3:4": (896, 1152), "3:2": (1216, 832), "2:3": (832, 1216), "21:9": (1536, 640),
    "9:21": (640, 1536),
}
AspectRatio = Literal["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "21:9", "9:21"]

MIN_SIDE, MAX_SIDE = 64, 2048
MAX_IMAGES = 4
# Activation memory grows with total pixels, so cap images × height × width: four 1024²
# images or one 2048² image per request.
MAX_TOTAL_PIXELS = 4 * 1024 * 1024
MAX_PROMPT_CHARS = 2000
PNDM_MIN_STEPS = 4
MAX_LORA_SCALE = 2.0  # past ~1.5 most LoRAs overcook; 2 leaves room for weak ones  # CLIP reads 77 tokens; longer text is only cost and log noise


class GenerateRequest(StrictModel):
    """`POST /generate`: text-to-image (or image-to-image) with optional refiner."""

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS,
                        description="What to draw.", examples=["A cat with a hat"])
    negative_prompt: str | None = Field(
        None, max_length=MAX_PROMPT_CHARS, description="What to steer away from.",
        examples=["blurry, low quality"])
    height: int = Field(1024, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8,
                        description="Output height in pixels, a multiple of 8. "
                                    "`aspect_ratio` overrides it.", examples=[1024])
    width: int = Field(1024, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8,
                       description="Output width in pixels, a multiple of 8. "
                                   "`aspect_ratio` overrides it.", examples=[1024])
    aspect_ratio: AspectRatio | None = Field(
        None, description="Overrides `height`/`width` with SDXL's trained size for the ratio: "
        + ", ".join(f"{k} → {w}×{h}" for k, (w, h) in ASPECT_RATIOS.items()) + ".",
        examples=["16:9"])
    num_inference_steps: int = Field(50, ge=1, le=100, description="Denoising steps.",
                                     examples=[50])
    guidance_scale: float = Field(4.0, ge=0.0, le=30.0, allow_inf_nan=False,
                                  description="Classifier-free guidance: how closely to follow "
                                  "the prompt (≤ 1 disables guidance).", examples=[4.0])
    num_images_per_prompt: int = Field(
        1, ge=1, le=MAX_IMAGES, description=f"Images to generate (1–{MAX_IMAGES}); images × "
        f"height × width is capped at {MAX_TOTAL_PIXELS} pixels.", examples=[1])
    seed: int | None = Field(
        42, ge=0, le=2**32 - 1, description="Random seed: the same seed and parameters give "
        "the same pixels. `null` picks one at random (returned in the response).",
        examples=[42])
    seed_image: str | None = Field(
        None, max_length=MAX_ENCODED_BYTES * 4 // 3 + 64,
        description="Base64 image (PNG/JPEG/WebP, or a `data:` URI) for image-to-image. "
        "Without explicit `height`/`width`/`aspect_ratio` the output keeps its size.",
        examples=["data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4"
                  "nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"])
    strength: float = Field(0.2, ge=0.05, le=1.0, allow_inf_nan=False,
                            description="How much noise is added to `seed_image` (0.05–1.0).",
                            examples=[0.2])
    scheduler: SchedulerName = Field("DDIM", description="Sampler.", examples=["DDIM"])
    timestep_spacing: TimestepSpacing = Field(
        "linspace", description="How the sampler spaces its timesteps.", examples=["linspace"])
    refiner: bool = Field(False, description="Two-step mode: refine the base output with "
                          "the refiner as image-to-image.", examples=[False])
    is_ensemble: bool = Field(False, description="Ensemble-of-experts mode: the refiner "
                              "finishes the last `refiner_ratio` of the base's denoising.",
                              examples=[True])
    refiner_ratio: float = Field(
        0.2, gt=0.0, lt=1.0, allow_inf_nan=False,
        description="Requires `is_ensemble=true`. Fraction of `num_inference_steps` run by "
        "the refiner; above 0.2 images start to look unnatural.", examples=[0.2])
    num_inference_steps_refiner: int = Field(
        50, ge=1, le=100, description="Refiner steps in two-step mode (the refiner actually "
        "runs `num_inference_steps_refiner × refiner_strength` of them).", examples=[50])
    guidance_scale_refiner: float = Field(
        1.0, ge=0.0, le=30.0, allow_inf_nan=False,
        description="Refiner guidance in two-step mode (ensemble mode uses `guidance_scale` "
        "for the whole trajectory).", examples=[1.0])
    refiner_strength: float = Field(
        0.3, ge=0.05, le=1.0, allow_inf_nan=False,
        description="genserve extension: image-to-image strength of the two-step refiner.",
        examples=[0.3])
    lora_id: str | None = Field(
        None, max_length=64, pattern=LORA_ID_PATTERN,
        description="A LoRA trained by a personalization job (its output id); served on the "
        "next request after training ends. Letters, digits, `_`, `-`.",
        examples=["user-123-portrait"])
    lora_name: str | None = Field(
        None, max_length=64, pattern=LORA_ID_PATTERN,
        description='A public LoRA by name, e.g. "offset" (the server\'s '
        "`public_lora_dir/<name>.safetensors`).", examples=["offset"])
    lora_scale: float = Field(
        1.0, ge=0.0, le=MAX_LORA_SCALE, allow_inf_nan=False,
        description="Strength of the LoRA's weights: 0 off, 1 as trained (its learned tokens "
        "apply at any scale). Needs `lora_id` or `lora_name`.", examples=[0.8])
    safety_filter: bool = Field(True, description="Run the NSFW safety checker; flagged "
                                "images are blacked out and reported in `has_nsfw_concepts`.",
                                examples=[True])

    _seed_image: Image.Image | None = PrivateAttr(None)

    @property
    def mode(self) -> Literal["base", "ensemble", "two_step"]:
        if self.is_ensemble:
            return "ensemble"
        return "two_step" if self.refiner else "base"

    @property
    def init_image(self) -> Image.Image | None:
        return self._seed_image

    @model_validator(mode="after")
    def _check_combinations(self) -> "GenerateRequest":
        if "refiner_ratio" in self.model_fields_set and not self.is_ensemble:
            raise FieldError("refiner_ratio", f"`refiner_ratio` ({self.refiner_ratio}) requires "
                             "`is_ensemble=true`; is_ensemble is false")
        if self.lora_id is not None and self.lora_name is not None:
            raise FieldError("lora_name", "one LoRA per request: got `lora_id` "
                             f"{self.lora_id!r} and `lora_name` {self.lora_name!r}")
        if "lora_scale" in self.model_fields_set and self.lora_id is None \
                and self.lora_name is None:
            raise FieldError("lora_scale", f"`lora_scale` ({self.lora_scale}) requires "
                             "`lora_id` or `lora_name`; neither is set")
        steps = self.num_inference_steps
        if self.scheduler == "PNDM":
            # diffusers' PNDM needs 4 timesteps for its warm-up (PRK) phase.
            refine_steps = self.num_inference_steps_refiner if self.mode == "two_step" else steps
            for name, value in (("num_inference_steps", steps),
                                ("num_inference_steps_refiner", refine_steps)):
                if value < PNDM_MIN_STEPS:
                    raise FieldError(name, f"scheduler PNDM needs `{name}` ≥ {PNDM_MIN_STEPS}; "
                                     f"got {value}")
        if self.is_ensemble:
            refiner_steps = steps * self.refiner_ratio
            if refiner_steps < 1 or steps - refiner_steps < 1:
                raise FieldError("refiner_ratio", "both experts need at least one step: "
                                 f"num_inference_steps × refiner_ratio = {steps} × "
                                 f"{self.refiner_ratio} = {refiner_steps:g}")
        if self.mode == "two_step":
            n = math.floor(self.num_inference_steps_refiner * self.refiner_strength)
            if n < 1:
                raise FieldError("refiner_strength", "the refiner would run 0 steps: "
                                 f"num_inference_steps_refiner × refiner_strength = "
                                 f"{self.num_inference_steps_refiner} × {self.refiner_strength}")
        if self.seed_image is not None:
            try:
                self._seed_image = decode_base64_image(self.seed_image)
            except ImageDecodeError as exc:
                raise FieldError("seed_image", f"`seed_image` is unusable: {exc}") from None
            if math.floor(steps * self.strength) < 1:
                raise FieldError("strength", "image-to-image would run 0 steps: "
                                 f"num_inference_steps × strength = {steps} × {self.strength}")
        width, height = self.output_size()
        total = self.num_images_per_prompt * width * height
        if total > MAX_TOTAL_PIXELS:
            raise FieldError("num_images_per_prompt", f"{self.num_images_per_prompt} images of "
                             f"{width}×{height} = {total} pixels; the limit is {MAX_TOTAL_PIXELS}")
        return self

    def output_size(self) -> tuple[int, int]:
        """(width, height) actually generated: aspect ratio, else explicit size, else the seed
        image's own size (rounded down to multiples of 8 and scaled into the pixel budget)."""
        if self.aspect_ratio is not None:
            return ASPECT_RATIOS[self.aspect_ratio]
        explicit = {"height", "width"} & self.model_fields_set
        if self._seed_image is None or explicit:
            return self.width, self.height
        w, h = self._seed_image.size
        scale = min(1.0, math.sqrt(MAX_TOTAL_PIXELS / self.num_images_per_prompt / (w * h)),
                    MAX_SIDE / max(w, h))
        scale = max(scale, MIN_SIDE / min(w, h))  # tiny inputs are scaled up, keeping the ratio
        fit = lambda v: max(MIN_SIDE, min(MAX_SIDE, int(v * scale) // 8 * 8))  # noqa: E731
        return fit(w), fit(h)


class GenerateResponse(StrictModel):
    images: list[ImageOut] = Field(description="The generated images, in order.")
    seed: int = Field(description="The seed used (the one to send to reproduce this).")
    has_nsfw_concepts: list[bool] | None = Field(
        description="Per image: flagged (and blacked out) by the safety checker. `null` when "
        "`safety_filter` was false.")
    mode: Literal["base", "ensemble", "two_step"] = Field(description="The generation mode run.")
    timings: dict[str, float] = Field(
        description="Seconds per stage (base, refiner, safety) and `total` at the ingress.")
    prompt: str = Field(description="The prompt, echoed.")
    reproducibility: Reproducibility | None = Field(
        None, description="How this result was made: model ids and revisions, scheduler and "
        "its config, seed, every request parameter, library versions. Send `parameters` back "
        "to regenerate the same images (same weights, versions and device type).")

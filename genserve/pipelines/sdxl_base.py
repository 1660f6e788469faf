"""SDXL base: text-to-image and image-to-image, full or stopping early for the refiner.

No Ray in here: the Serve deployment wraps this class, and tests and benchmarks call it
directly. One loaded set of weights serves every request; each call builds a light pipeline
object around them with its own scheduler, so concurrent calls never share scheduler state.
LoRAs (`self.loras`, see `genserve.pipelines.lora`) are loaded into those shared weights, so a
run holds the LoRA lock with exactly its own adapter active.
"""

from __future__ import annotations

import logging
import time

import torch
from PIL import Image

from genserve.device import cpu_generator
from genserve.pipelines.loading import HealthState, Placement, probe_vae
from genserve.pipelines.lora import BASE_ADAPTERS, BASE_TOKENS, LoadedLora, LoraHost
from genserve.pipelines.outputs import (
    ImageBatch,
    LatentBatch,
    add_provenance,
    step_callback,
    to_uint8,
)
from genserve.pipelines.params import BaseParams
from genserve.pipelines.schedulers import make_scheduler
from genserve.repro import library_versions, model_source, placement_record, scheduler_record

log = logging.getLogger(__name__)


class SDXLBasePipeline:
    """Loads SDXL base once; `generate` runs one request.

    >>> base = SDXLBasePipeline("stabilityai/stable-diffusion-xl-base-1.0")  # doctest: +SKIP
    >>> base.generate(BaseParams("a cat with a hat", steps=30)).images[0].shape  # doctest: +SKIP
    (1024, 1024, 3)
    """

    def __init__(self, model_id: str, *, vae_id: str | None = None, revision: str | None = None,
                 device: str = "auto", dtype: str = "auto"):
        from diffusers import AutoencoderKL, StableDiffusionXLPipeline

        self.placement = Placement.resolve(device, dtype)
        self.model_id = model_id
        started = time.perf_counter()
        kwargs = self.placement.from_pretrained_kwargs(revision)
        # Reproducibility: where the weights came from, worked out once per load.
        self.sources = [model_source("base", model_id, revision)]
        if vae_id and self.placement.dtype == torch.float16:
            # SDXL's own VAE overflows in fp16 (NaN → black images); the fp16-fix VAE does not.
            kwargs["vae"] = AutoencoderKL.from_pretrained(
                vae_id, dtype=self.placement.dtype, use_safetensors=True)
            self.sources.append(model_source("vae", vae_id))
        pipe = StableDiffusionXLPipeline.from_pretrained(model_id, add_watermarker=False, **kwargs)
        pipe.to(self.placement.device)
        pipe.set_progress_bar_config(disable=True)
        self._components = pipe.components
        self._scheduler_config = dict(pipe.scheduler.config)
        self._scheduler_records: dict[tuple[str, str], dict] = {}
        self.loras = LoraHost(self._components, adapters=BASE_ADAPTERS, tokens=BASE_TOKENS)
        self.health = HealthState()
        self.load_seconds = time.perf_counter() - started
        log.info("loaded %s on %s/%s in %.1fs", model_id, self.placement.device,
                 self.placement.dtype, self.load_seconds)

    def check_health(self) -> None:
        self.health.raise_if_broken()
        probe_vae(self._components["vae"], self.placement)

    def scheduler_record(self, name: str, timestep_spacing: str) -> dict:
        """The scheduler a request with these settings runs, for its reproducibility record
        (built once per setting: a config copy, no weights)."""
        key = (name, timestep_spacing)
        if key not in self._scheduler_records:
            self._scheduler_records[key] = scheduler_record(
                name, make_scheduler(name, timestep_spacing, self._scheduler_config))
        return self._scheduler_records[key]

    def provenance(self, p: BaseParams) -> dict:
        return add_provenance({}, self.sources,
                              scheduler=self.scheduler_record(p.scheduler, p.timestep_spacing),
                              versions=library_versions(), **placement_record(self.placement))

    def generate(self, p: BaseParams, on_step=None,
                 lora: LoadedLora | None = None) -> LatentBatch | ImageBatch:
        """Run one request; returns latents when ``p.output == "latent"``, else images.
        ``on_step(step, total)`` is called after each denoising step. ``lora`` (from
        ``self.loras.load``) is applied at ``p.lora_scale``; without it no adapter is active."""
        self.health.raise_if_broken()
        with self.loras.active(lora, p.lora_scale) as rewrite:
            started = time.perf_counter()  # model time, not time queued behind the lock
            result = self._run(p, on_step, rewrite)
            timings = {"base": time.perf_counter() - started}
        if p.output == "latent":
            return LatentBatch(result.float().cpu(), p.height, p.width, timings,
                               provenance=self.provenance(p))
        return ImageBatch(to_uint8(result), timings, provenance=self.provenance(p))

    def _run(self, p: BaseParams, on_step, rewrite):
        from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

        # Read the components under the LoRA lock: loads swap the tokenizers.
        components = {**self._components,
                      "scheduler": make_scheduler(p.scheduler, p.timestep_spacing,
                                                  self._scheduler_config)}
        kwargs = dict(
            prompt=rewrite(p.prompt), negative_prompt=rewrite(p.negative_prompt),
            num_inference_steps=p.steps,
            guidance_scale=p.guidance_scale, num_images_per_prompt=p.num_images,
            generator=cpu_generator(p.seed),
            output_type="latent" if p.output == "latent" else "np",
        )
        if p.denoising_end is not None:
            kwargs["denoising_end"] = p.denoising_end
        if on_step is not None:
            kwargs["callback_on_step_end"] = step_callback(on_step)
        if p.init_image is not None:
            pipe = StableDiffusionXLImg2ImgPipeline(**components, add_watermarker=False)
            image = p.init_image.convert("RGB")
            if image.size != (p.width, p.height):
                image = image.resize((p.width, p.height), Image.Resampling.LANCZOS)
            kwargs.update(image=image, strength=p.strength)
        else:
            pipe = StableDiffusionXLPipeline(**components, add_watermarker=False)
            kwargs.update(height=p.height, width=p.width)
        pipe.set_progress_bar_config(disable=True)
        with self.health.guard(f"out of GPU memory for {p.num_images}×{p.width}×{p.height}; "
                                "retry later or ask for fewer/smaller images"):
            with torch.inference_mode():
                return pipe(**kwargs).images


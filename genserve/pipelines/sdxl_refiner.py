"""SDXL refiner: finishes the base model's latents (ensemble of experts) or re-denoises its
output as image-to-image (two-step). Text encoder 2 only, aesthetic-score conditioning.
A request's LoRA contributes only its text-encoder-2 tokens here (see `genserve.pipelines.lora`)."""

from __future__ import annotations

import logging
import time

import torch

from genserve.device import cpu_generator
from genserve.pipelines.loading import HealthState, Placement, probe_vae
from genserve.pipelines.lora import REFINER_TOKENS, LoadedLora, LoraHost
from genserve.pipelines.outputs import (
    ImageBatch,
    LatentBatch,
    add_provenance,
    step_callback,
    to_uint8,
)
from genserve.pipelines.params import RefineParams
from genserve.pipelines.schedulers import make_scheduler
from genserve.repro import model_source

log = logging.getLogger(__name__)


class SDXLRefinerPipeline:
    """Loads the SDXL refiner once; `refine` runs one request on a `LatentBatch`."""

    def __init__(self, model_id: str, *, vae_id: str | None = None, revision: str | None = None,
                 device: str = "auto", dtype: str = "auto"):
        from diffusers import AutoencoderKL, StableDiffusionXLImg2ImgPipeline

        self.placement = Placement.resolve(device, dtype)
        self.model_id = model_id
        started = time.perf_counter()
        kwargs = self.placement.from_pretrained_kwargs(revision)
        self.sources = [model_source("refiner", model_id, revision)]  # once per load
        if vae_id and self.placement.dtype == torch.float16:
            kwargs["vae"] = AutoencoderKL.from_pretrained(
                vae_id, dtype=self.placement.dtype, use_safetensors=True)
            self.sources.append(model_source("refiner_vae", vae_id))
        pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(
            model_id, add_watermarker=False, **kwargs)
        pipe.to(self.placement.device)
        self._components = pipe.components
        self._config = {"requires_aesthetics_score": pipe.config.requires_aesthetics_score,
                        "force_zeros_for_empty_prompt": pipe.config.force_zeros_for_empty_prompt}
        self._scheduler_config = dict(pipe.scheduler.config)
        self.loras = LoraHost(self._components, adapters=(), tokens=REFINER_TOKENS)
        self.health = HealthState()
        self.load_seconds = time.perf_counter() - started
        log.info("loaded %s on %s/%s in %.1fs", model_id, self.placement.device,
                 self.placement.dtype, self.load_seconds)

    def check_health(self) -> None:
        self.health.raise_if_broken()
        probe_vae(self._components["vae"], self.placement)

    def refine(self, batch: LatentBatch, p: RefineParams, on_step=None,
               lora: LoadedLora | None = None) -> ImageBatch:
        self.health.raise_if_broken()
        with self.loras.active(lora) as rewrite:
            started = time.perf_counter()  # model time, not time queued behind the lock
            images = self._run(batch, p, on_step, rewrite)
            seconds = time.perf_counter() - started
        return ImageBatch(to_uint8(images), {**batch.timings, "refiner": seconds},
                          provenance=add_provenance(batch.provenance, self.sources),
                          gpu_seconds=batch.gpu_seconds)

    def _run(self, batch: LatentBatch, p: RefineParams, on_step, rewrite):
        from diffusers import StableDiffusionXLImg2ImgPipeline

        pipe = StableDiffusionXLImg2ImgPipeline(
            **{**self._components, "scheduler": make_scheduler(
                p.scheduler, p.timestep_spacing, self._scheduler_config)},
            **self._config, add_watermarker=False)
        pipe.set_progress_bar_config(disable=True)
        latents = batch.latents.to(self.placement.device, self.placement.dtype)
        kwargs = dict(
            prompt=rewrite(p.prompt), negative_prompt=rewrite(p.negative_prompt), image=latents,
            num_inference_steps=p.steps, guidance_scale=p.guidance_scale,
            num_images_per_prompt=latents.shape[0], generator=cpu_generator(p.seed),
            output_type="np",
        )
        if p.denoising_start is not None:
            kwargs["denoising_start"] = p.denoising_start
        else:
            kwargs["strength"] = p.strength
        if on_step is not None:
            kwargs["callback_on_step_end"] = step_callback(on_step)
        with self.health.guard("out of GPU memory in the refiner; retry later"):
            with torch.inference_mode():
                return pipe(**kwargs).images

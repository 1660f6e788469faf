"""The Stable Diffusion safety checker (CLIP ViT + concept embeddings), run on final images.

SDXL ships without one; we run the same `StableDiffusionSafetyChecker` model SD 1.x/2.x use
(`CompVis/stable-diffusion-safety-checker`). Flagged images are replaced by black ones and
reported, so a caller can tell "filtered" from "a dark picture".
"""

from __future__ import annotations

import time

import numpy as np
import torch

from genserve.pipelines.loading import HealthState, Placement
from genserve.pipelines.outputs import ImageBatch, add_provenance
from genserve.repro import model_source


class SafetyCheckerPipeline:
    def __init__(self, model_id: str, *, revision: str | None = None, device: str = "auto",
                 dtype: str = "auto"):
        from diffusers.pipelines.stable_diffusion.safety_checker import (
            StableDiffusionSafetyChecker,
        )
        from transformers import CLIPImageProcessor

        self.placement = Placement.resolve(device, dtype)
        self.sources = [model_source("safety", model_id, revision)]  # once per load
        kwargs = {"dtype": self.placement.dtype, "use_safetensors": True}
        if revision:
            kwargs["revision"] = revision
        self.model = StableDiffusionSafetyChecker.from_pretrained(model_id, **kwargs)
        self.model.to(self.placement.device).eval()
        self.processor = CLIPImageProcessor.from_pretrained(model_id, revision=revision)
        self.health = HealthState()

    def check_health(self) -> None:
        self.health.raise_if_broken()
        self.check(ImageBatch([np.zeros((64, 64, 3), dtype=np.uint8)]))

    def check(self, batch: ImageBatch) -> ImageBatch:
        """Return the batch with flagged images blacked out and ``nsfw`` filled in."""
        self.health.raise_if_broken()
        started = time.perf_counter()
        pixels = self.processor(images=batch.images, return_tensors="pt").pixel_values
        pixels = pixels.to(self.placement.device, self.placement.dtype)
        try:
            with torch.inference_mode():
                _, flags = self.model(clip_input=pixels, images=list(batch.images))
        except Exception as exc:
            self.health.record(exc)
            raise
        flags = [bool(f) for f in flags]
        images = [np.zeros_like(img) if flagged else img
                  for img, flagged in zip(batch.images, flags)]
        return ImageBatch(images, {**batch.timings, "safety": time.perf_counter() - started},
                          nsfw=flags, provenance=add_provenance(batch.provenance, self.sources),
                          gpu_seconds=batch.gpu_seconds)

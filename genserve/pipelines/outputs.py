"""Typed values passed between pipeline stages (and between Ray Serve deployments).

Tensors travel on the CPU: the receiving replica may sit on another GPU or another node, and
a latent batch is small (4 × H/8 × W/8 per image).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass
class LatentBatch:
    """Scaled SDXL latents, ready for the refiner (ensemble hand-off or two-step input)."""

    latents: "torch.Tensor"
    height: int
    width: int
    timings: dict[str, float] = field(default_factory=dict)
    # Where it came from (models, scheduler, placement; see `genserve.repro`) and what it cost
    # so far: each stage adds its own, the ingress turns them into the response's record.
    provenance: dict = field(default_factory=dict)
    gpu_seconds: float = 0.0


@dataclass
class ImageBatch:
    """Decoded images as uint8 HWC arrays (compact to ship: 3 bytes per pixel)."""

    images: list[np.ndarray]
    timings: dict[str, float] = field(default_factory=dict)
    nsfw: list[bool] | None = None  # None: the safety filter did not run
    provenance: dict = field(default_factory=dict)  # as in `LatentBatch`
    gpu_seconds: float = 0.0

    @property
    def size(self) -> tuple[int, int]:
        height, width = self.images[0].shape[:2]
        return width, height


def add_provenance(upstream: dict, models: list[dict], **fields) -> dict:
    """``upstream``'s provenance with this stage's ``models`` appended and ``fields`` set
    where the upstream stage left them unset (the first stage's scheduler is the record's)."""
    merged = {**upstream, "models": [*upstream.get("models", []), *models]}
    for key, value in fields.items():
        merged.setdefault(key, value)
    return merged


def step_callback(on_step):
    """diffusers' ``callback_on_step_end`` reporting ``on_step(done, total)`` after each
    denoising step (progress for logs and the queue API)."""

    def callback(pipe, step, timestep, tensors):
        on_step(step + 1, pipe.num_timesteps)
        return tensors

    return callback


def to_uint8(images: np.ndarray) -> list[np.ndarray]:
    """diffusers' ``output_type="np"`` floats in [0, 1] → uint8 arrays."""
    return [np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8) for img in images]

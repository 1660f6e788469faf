"""Plain parameter records for the SDXL stages: what the ingress sends each deployment.

Kept free of torch so the ingress (and `import deployments.app`) stays light.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from PIL import Image


@dataclass
class BaseParams:
    """One base-model call. ``denoising_end`` < 1 stops early and returns latents for the
    refiner (ensemble of experts); ``init_image`` switches to image-to-image."""

    prompt: str
    negative_prompt: str | None = None
    height: int = 1024
    width: int = 1024
    steps: int = 50
    guidance_scale: float = 4.0
    num_images: int = 1
    seed: int = 42
    scheduler: str = "DDIM"
    timestep_spacing: str = "linspace"
    init_image: Image.Image | None = None
    strength: float = 0.2
    denoising_end: float | None = None
    output: Literal["latent", "image"] = "image"


@dataclass
class RefineParams:
    """``denoising_start`` set: continue the base's trajectory from that fraction (ensemble).
    Otherwise: image-to-image on the base's output with ``strength`` (two-step)."""

    prompt: str
    negative_prompt: str | None = None
    steps: int = 50
    guidance_scale: float = 4.0
    seed: int = 42
    scheduler: str = "DDIM"
    timestep_spacing: str = "linspace"
    denoising_start: float | None = None
    strength: float = 0.3

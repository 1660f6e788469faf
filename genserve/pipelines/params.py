"""Plain parameter records for the SDXL stages: what the ingress sends each deployment.

Kept free of torch so the ingress (and `import deployments.app`) stays light.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from PIL import Image

# A LoRA's multiplexed model id: which directory it comes from and its name there. Trained
# and public LoRAs live in separate namespaces, so a user id can never shadow a public name.
TRAINED, PUBLIC = "id", "public"


def adapter_key(lora_id: str | None = None, lora_name: str | None = None) -> str | None:
    """The multiplexed model id for a request's LoRA: ``id:<lora_id>``, ``public:<name>``.

    >>> adapter_key(lora_id="user-1"), adapter_key(lora_name="offset"), adapter_key()
    ('id:user-1', 'public:offset', None)
    """
    if lora_id is not None:
        return f"{TRAINED}:{lora_id}"
    return f"{PUBLIC}:{lora_name}" if lora_name is not None else None


def split_adapter_key(key: str) -> tuple[str, str]:
    """(namespace, name) of a key made by `adapter_key`; the request field named in errors is
    ``lora_id`` for trained LoRAs and ``lora_name`` for public ones."""
    namespace, sep, name = key.partition(":")
    if not sep or namespace not in (TRAINED, PUBLIC):
        raise ValueError(f"adapter key {key!r} is not 'id:<lora_id>' or 'public:<name>'")
    return namespace, name


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
    # `adapter_key`; the deployment also expects it as the request's multiplexed model id.
    adapter: str | None = None
    lora_scale: float = 1.0


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
    adapter: str | None = None  # the refiner loads only the LoRA's text-encoder-2 tokens

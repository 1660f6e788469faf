"""Load the SDXL parts a training worker needs, with the precision each one trains in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from genserve.errors import InvalidInput


@dataclass
class SDXLParts:
    tokenizers: list
    text_encoders: list
    vae: Any
    unet: Any
    scheduler: Any
    weight_dtype: torch.dtype   # frozen weights (fp16/bf16 on CUDA, fp32 on CPU)
    vae_dtype: torch.dtype


def _source(location: str, field: str) -> str:
    # Hub ids and local directories load as they are; URLs and s3:// need a download step
    # this job does not have yet: say so instead of failing deep inside from_pretrained.
    if "://" in location:
        raise InvalidInput(f"{field}: {location!r} — model URLs are not supported by the "
                           "training job yet; give a Hugging Face repo id or a local "
                           "directory", field)
    return location


def load_parts(cfg: dict[str, Any], device: torch.device) -> SDXLParts:
    """The base model's tokenizers, text encoders, UNet and noise schedule, and the VAE.

    On CUDA the frozen weights are half precision (bf16 where supported) and adapters stay
    fp32; ``upscale_vae_32bit`` keeps the VAE in fp32 (SDXL's VAE overflows in fp16).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    model = _source(cfg["model_url"], "model_url")
    vae_id = _source(cfg["vae_url"], "vae_url")
    cuda = device.type == "cuda"
    if cuda:
        weight_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        weight_dtype = torch.float32
    common = {"revision": cfg["revision"]} if cfg["revision"] else {}
    weights = dict(common, use_safetensors=True)
    if cfg["variant"]:
        weights["variant"] = cfg["variant"]
    tokenizers = [CLIPTokenizer.from_pretrained(model, subfolder=sub, **common)
                  for sub in ("tokenizer", "tokenizer_2")]
    text_encoders = [
        CLIPTextModel.from_pretrained(model, subfolder="text_encoder", dtype=weight_dtype,
                                      **weights),
        CLIPTextModelWithProjection.from_pretrained(model, subfolder="text_encoder_2",
                                                    dtype=weight_dtype, **weights)]
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", torch_dtype=weight_dtype,
                                                **weights)
    scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler", **common)
    vae_dtype = torch.float32 if cfg["upscale_vae_32bit"] or not cuda else weight_dtype
    vae = AutoencoderKL.from_pretrained(vae_id, use_safetensors=True, torch_dtype=vae_dtype)
    vae.requires_grad_(False).to(device).eval()
    for encoder in text_encoders:
        encoder.requires_grad_(False).to(device)
    unet.requires_grad_(False).to(device)
    return SDXLParts(tokenizers, text_encoders, vae, unet, scheduler, weight_dtype, vae_dtype)


def cast_trainable_fp32(*models: torch.nn.Module) -> None:
    """Adapters and learned rows train in fp32 even when the frozen weights are half."""
    for model in models:
        for p in model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()

"""LoRA directories for the tiny SDXL base, written the way the personalization job writes them
(`genserve.lora_format`), with seeded random adapter weights big enough to change an image."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from genserve import lora_format as LF

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
KINDS = ("lora", "dora", "lokr", "loha")


def adapter_config(kind: str, targets: list[str], rank: int = 4):
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    if kind == "lokr":
        return LoKrConfig(r=rank, alpha=rank, target_modules=targets)
    if kind == "loha":
        return LoHaConfig(r=rank, alpha=rank, target_modules=targets)
    return LoraConfig(r=rank, lora_alpha=rank, use_dora=kind == "dora", target_modules=targets)


def _random_state(model: torch.nn.Module, config, generator: torch.Generator) -> dict:
    """Inject ``config`` and return its adapter weights, randomised: peft's own init leaves
    LoRA's B at zero (no change at all), and we want every kind to move the output."""
    from peft import get_peft_model_state_dict, inject_adapter_in_model

    inject_adapter_in_model(config, model, adapter_name="default")
    state = get_peft_model_state_dict(model, adapter_name="default")
    out = {}
    for key, value in state.items():
        noise = torch.randn(value.shape, generator=generator)
        # DoRA's magnitude is a per-channel norm: perturb it, keep it positive.
        out[key] = value * (1 + 0.2 * noise).abs() if "magnitude" in key else noise * 0.3
    return out


def write_lora(root: Path, lora_id: str, base_dir: Path, *, kind: str = "lora", seed: int = 0,
               unet: bool = True, text_encoders: bool = False, embeddings: bool = False,
               token_abstraction: str = "TOK", n_tokens: int = 2) -> Path:
    """``root/lora_id/`` with the weights (and embeddings) for the tiny base at ``base_dir``."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    generator = torch.Generator().manual_seed(seed)
    weights = LF.LoraWeights()
    if unet:
        config = adapter_config(kind, UNET_TARGETS)
        model = UNet2DConditionModel.from_pretrained(base_dir / "unet")
        weights.states["unet"] = _random_state(model, config, generator)
        weights.configs["unet"] = config
    if text_encoders:
        for name, cls in (("text_encoder", CLIPTextModel),
                          ("text_encoder_2", CLIPTextModelWithProjection)):
            config = adapter_config("lora", TEXT_TARGETS)
            model = cls.from_pretrained(base_dir / name)
            weights.states[name] = _random_state(model, config, generator)
            weights.configs[name] = config
    out = root / lora_id
    out.mkdir(parents=True, exist_ok=True)
    LF.save_lora_weights(out / LF.WEIGHTS_NAME, weights)
    if embeddings:
        from transformers import CLIPTextConfig

        tokens = [f"<s{i}>" for i in range(n_tokens)]
        l_width, g_width = (CLIPTextConfig.from_pretrained(base_dir / e).hidden_size
                            for e in ("text_encoder", "text_encoder_2"))
        LF.save_embeddings(out / LF.EMBEDDINGS_NAME, LF.TokenEmbeddings(
            token_abstraction, tokens,
            clip_l=torch.randn(n_tokens, l_width, generator=generator),
            clip_g=torch.randn(n_tokens, g_width, generator=generator)))
    (out / LF.CONFIG_NAME).write_text(json.dumps({"lora_type": kind, "seed": seed}))
    return out

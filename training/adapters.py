"""peft adapters for the personalization job: which kind, where, and how they are written out.

UNet: LoRA (optionally DoRA), LoKr or LoHa on ``target_unet_modules``; text encoders: LoRA on
``target_text_encoder_modules`` when ``train_text_encoder``. Alpha equals rank (scale 1), as
diffusers' DreamBooth scripts and loaders assume when a file carries no alpha.

Two file layouts come out of one set of weights: diffusers' (`genserve.lora_format`, what our
deployments and ``load_lora_weights`` read) and kohya's (``lora_unet_<path_with_underscores>``
with ``lora_down``/``lora_up``/``alpha``; LoKr/LoHa keep LyCORIS's parameter names), which
A1111 and ComfyUI load.
"""

from __future__ import annotations

from typing import Any

import torch

from genserve.lora_format import COMPONENTS, LoraWeights

_KOHYA_PREFIX = {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}
# peft parameter name → kohya's; everything else (lokr_w1, hada_w1_a, …) keeps its name.
_KOHYA_PARAM = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight",
                "lora_magnitude_vector": "dora_scale"}
_ADAPTER_PARAMS = ("lora_A.weight", "lora_B.weight", "lora_magnitude_vector", "lokr_w1",
                   "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
                   "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")


def unet_adapter_config(cfg: dict[str, Any]) -> Any:
    """The peft config for the UNet from the job config (``lora_type``, ``use_dora``, rank)."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    modules = list(cfg["target_unet_modules"])
    rank = cfg["rank"]
    if cfg["lora_type"] == "lokr":
        return LoKrConfig(r=rank, alpha=rank, target_modules=modules)
    if cfg["lora_type"] == "loha":
        return LoHaConfig(r=rank, alpha=rank, target_modules=modules)
    return LoraConfig(r=rank, lora_alpha=rank, use_dora=cfg["use_dora"],
                      init_lora_weights="gaussian", target_modules=modules)


def text_encoder_adapter_config(cfg: dict[str, Any]) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=cfg["rank"], lora_alpha=cfg["rank"], init_lora_weights="gaussian",
                      target_modules=list(cfg["target_text_encoder_modules"]))


def add_adapter(model: torch.nn.Module, config: Any, *, what: str) -> None:
    """Inject ``config``'s adapter into ``model`` (frozen base, trainable adapter only).

    A target module name that matches nothing is the user's typo, not a silent no-op.
    """
    from peft import inject_adapter_in_model

    model.requires_grad_(False)
    try:
        inject_adapter_in_model(config, model, adapter_name="default")
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights with peft's keys (adapter name removed)."""
    from peft import get_peft_model_state_dict

    # clone: on CPU `.cpu()` is the live tensor, and callers keep snapshots across steps.
    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(
        model, adapter_name="default").items()}


def load_adapter_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state, adapter_name="default")
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"checkpoint holds adapter keys the model lacks: {unexpected[:3]}")


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def to_kohya(weights: LoraWeights) -> dict[str, torch.Tensor]:
    """kohya/A1111 keys for every component, with an ``alpha`` per module (= rank)."""
    out: dict[str, torch.Tensor] = {}
    for component in COMPONENTS:
        for key, value in weights.states.get(component, {}).items():
            param = next((p for p in _ADAPTER_PARAMS if key.endswith("." + p)), None)
            if param is None:
                raise ValueError(f"{component}: {key!r} is not an adapter parameter")
            module = key[: -len(param) - 1].replace(".", "_")
            name = f"{_KOHYA_PREFIX[component]}_{module}"
            out[f"{name}.{_KOHYA_PARAM.get(param, param)}"] = value
            if param in ("lora_A.weight", "lokr_w1", "lokr_w1_a", "hada_w1_a"):
                config = weights.configs.get(component)
                alpha = getattr(config, "lora_alpha", None) or getattr(config, "alpha", None)
                out[f"{name}.alpha"] = torch.tensor(float(alpha or value.shape[0]))
    return out

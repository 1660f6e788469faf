"""The on-disk contract between personalization training and SDXL serving.

A trained LoRA lives in one directory per id (``<lora_dir>/<lora_id>/``)::

    pytorch_lora_weights.safetensors   adapter weights, diffusers' key layout
    embeddings.safetensors             learned token embeddings (pivotal tuning), optional
    config.json                        the training configuration

Weights file: peft's state-dict keys (``get_peft_model_state_dict``, adapter name removed)
prefixed by the component, ``unet.`` / ``text_encoder.`` / ``text_encoder_2.`` — exactly what
diffusers' ``save_lora_weights`` writes, so a plain LoRA or DoRA file loads with
``StableDiffusionXLPipeline.load_lora_weights``. The peft config of every component is kept in
the safetensors metadata (``genserve.peft.<component>``) so LoKr and LoHa adapters, which
diffusers' loader does not read, can be rebuilt exactly with peft.

Embeddings file: ``clip_l`` (text encoder 1) and ``clip_g`` (text encoder 2), one row per new
token — the layout diffusers' advanced DreamBooth script and fal produce, usable with
``load_textual_inversion(state_dict["clip_l"], token=[...])``. Metadata says which placeholder
(``token_abstraction``) the tokens stand for and their names.

Only safetensors is ever read: no pickle from users.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the ingress validates ids with LORA_ID and must not import torch
    import torch

WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
EMBEDDINGS_NAME = "embeddings.safetensors"
CONFIG_NAME = "config.json"
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
# Ids name directories and multiplexed models: no separators, dots or spaces.
LORA_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
LORA_ID = re.compile(LORA_ID_PATTERN)
_PEFT_KEY = "genserve.peft."


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)  # enums (PeftType) serialise by value


def config_to_json(config: Any) -> str:
    """A peft config as JSON (sets become sorted lists)."""
    return json.dumps(config.to_dict(), default=_json_default, sort_keys=True)


def config_from_json(text: str) -> Any:
    from peft import PeftConfig

    data = json.loads(text)
    return PeftConfig.from_peft_type(**data)


@dataclass
class LoraWeights:
    """Per-component peft state dicts (keys without the component prefix) and configs."""

    states: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    configs: dict[str, Any] = field(default_factory=dict)


def save_lora_weights(path: str | Path, weights: LoraWeights) -> Path:
    """Write ``weights`` to ``path`` (a safetensors file) in the layout described above."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    metadata = {"format": "pt"}
    for component, state in weights.states.items():
        if component not in COMPONENTS:
            raise ValueError(f"unknown component {component!r}; known: {COMPONENTS}")
        for key, value in state.items():
            tensors[f"{component}.{key}"] = value.detach().to("cpu").contiguous()
        if component in weights.configs:
            metadata[_PEFT_KEY + component] = config_to_json(weights.configs[component])
    path = Path(path)
    save_file(tensors, str(path), metadata=metadata)
    return path


def has_peft_configs(path: str | Path) -> bool:
    """Whether ``path`` carries genserve's peft configs (reads the header only). Files without
    them (diffusers' or kohya's writers) go through diffusers' own loader."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return any(k.startswith(_PEFT_KEY) for k in (f.metadata() or {}))


def load_lora_weights(path: str | Path) -> LoraWeights:
    """Read a weights file written by `save_lora_weights` (or diffusers' own writer: then
    ``configs`` is empty and the caller falls back to diffusers' loader)."""
    from safetensors import safe_open

    out = LoraWeights()
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        for key in f.keys():
            component, _, rest = key.partition(".")
            if component not in COMPONENTS or not rest:
                raise ValueError(f"{Path(path).name}: key {key!r} names no SDXL component "
                                 f"({', '.join(COMPONENTS)})")
            out.states.setdefault(component, {})[rest] = f.get_tensor(key)
    for component in COMPONENTS:
        text = metadata.get(_PEFT_KEY + component)
        if text is not None:
            out.configs[component] = config_from_json(text)
    return out


@dataclass
class TokenEmbeddings:
    """Learned rows for the new tokens, per SDXL text encoder."""

    token_abstraction: str
    tokens: list[str]
    clip_l: torch.Tensor  # [len(tokens), text_encoder hidden size]
    clip_g: torch.Tensor  # [len(tokens), text_encoder_2 hidden size]


def save_embeddings(path: str | Path, emb: TokenEmbeddings) -> Path:
    from safetensors.torch import save_file

    if emb.clip_l.shape[0] != len(emb.tokens) or emb.clip_g.shape[0] != len(emb.tokens):
        raise ValueError(f"{len(emb.tokens)} tokens but clip_l has {emb.clip_l.shape[0]} rows "
                         f"and clip_g {emb.clip_g.shape[0]}")
    path = Path(path)
    save_file({"clip_l": emb.clip_l.detach().cpu().float().contiguous(),
               "clip_g": emb.clip_g.detach().cpu().float().contiguous()}, str(path),
              metadata={"format": "pt", "token_abstraction": emb.token_abstraction,
                        "tokens": json.dumps(emb.tokens)})
    return path


def load_embeddings(path: str | Path) -> TokenEmbeddings:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        missing = {"clip_l", "clip_g"} - set(f.keys())
        if missing:
            raise ValueError(f"{Path(path).name} lacks {sorted(missing)}")
        clip_l, clip_g = f.get_tensor("clip_l"), f.get_tensor("clip_g")
    tokens = json.loads(metadata["tokens"]) if "tokens" in metadata else [
        f"<s{i}>" for i in range(clip_l.shape[0])]
    return TokenEmbeddings(metadata.get("token_abstraction", "TOK"), tokens, clip_l, clip_g)

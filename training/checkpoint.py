"""Checkpoints (resume) and the final artifacts, written by rank 0 into a directory.

A checkpoint's weights use the same files as the final output (`genserve.lora_format`), so a
checkpoint is itself servable; optimizer and LR-scheduler state sit next to them in
``trainer_state.pt`` (our own file, read back with ``weights_only=True``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from genserve import lora_format as LF
from training import adapters as A

STATE_NAME = "trainer_state.pt"
PROGRESS_NAME = "progress.json"
KOHYA_NAME = "lora_kohya.safetensors"
UNET_NAME = "unet.safetensors"


@dataclass
class Trained:
    """What a worker trains, for saving and restoring."""

    unet: torch.nn.Module                 # unwrapped (no DDP)
    text_encoders: list[torch.nn.Module]
    tokens: Any                           # training.tokens.NewTokens or None
    cfg: dict[str, Any]
    unet_config: Any                      # peft config, None for a full fine-tune
    te_config: Any                        # peft config, None without text-encoder LoRA


def lora_weights(t: Trained) -> LF.LoraWeights:
    weights = LF.LoraWeights()
    if t.unet_config is not None:
        weights.states["unet"] = A.adapter_state(t.unet)
        weights.configs["unet"] = t.unet_config
    if t.te_config is not None:
        for name, encoder in zip(("text_encoder", "text_encoder_2"), t.text_encoders,
                                 strict=True):
            weights.states[name] = A.adapter_state(encoder)
            weights.configs[name] = t.te_config
    return weights


def save_weights(t: Trained, directory: Path) -> None:
    from safetensors.torch import save_file

    if t.unet_config is not None or t.te_config is not None:
        LF.save_lora_weights(directory / LF.WEIGHTS_NAME, lora_weights(t))
    if t.unet_config is None:
        save_file({k: v.detach().cpu().contiguous() for k, v in t.unet.state_dict().items()},
                  str(directory / UNET_NAME))
    if t.tokens is not None:
        LF.save_embeddings(directory / LF.EMBEDDINGS_NAME, t.tokens.embeddings())


def save_checkpoint(t: Trained, directory: Path, *, step: int, optimizer, lr_scheduler,
                    resumed_from: int | None) -> None:
    save_weights(t, directory)
    torch.save({"step": step, "optimizer": optimizer.state_dict(),
                "lr_scheduler": lr_scheduler.state_dict()}, directory / STATE_NAME)
    (directory / PROGRESS_NAME).write_text(json.dumps({"step": step,
                                                      "resumed_from": resumed_from}))


def restore_checkpoint(t: Trained, directory: Path, *, optimizer, lr_scheduler) -> int:
    """Load weights and optimizer state; returns the step to continue from."""
    from safetensors.torch import load_file

    if (directory / LF.WEIGHTS_NAME).exists():
        weights = LF.load_lora_weights(directory / LF.WEIGHTS_NAME)
        if "unet" in weights.states:
            A.load_adapter_state(t.unet, weights.states["unet"])
        for name, encoder in zip(("text_encoder", "text_encoder_2"), t.text_encoders,
                                 strict=True):
            if name in weights.states:
                A.load_adapter_state(encoder, weights.states[name])
    if t.unet_config is None:
        t.unet.load_state_dict(load_file(str(directory / UNET_NAME)))
    if t.tokens is not None:
        t.tokens.load_rows(LF.load_embeddings(directory / LF.EMBEDDINGS_NAME))
    state = torch.load(directory / STATE_NAME, weights_only=True, map_location="cpu")
    optimizer.load_state_dict(state["optimizer"])
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    return int(state["step"])


def export(t: Trained, directory: Path) -> None:
    """The final artifacts: weights (diffusers + kohya), embeddings, the job's config."""
    from safetensors.torch import save_file

    save_weights(t, directory)
    weights = lora_weights(t)
    if weights.states:
        save_file(A.to_kohya(weights), str(directory / KOHYA_NAME), metadata={"format": "pt"})
    (directory / LF.CONFIG_NAME).write_text(json.dumps(t.cfg, indent=2, sort_keys=True))

"""Which examples, which phase and which random numbers each optimizer step uses.

Everything is a pure function of (seed, step, micro-batch, worker rank): a run resumed from a
checkpoint at step k draws exactly what the uninterrupted run would have drawn from step k on,
and no RNG state has to be checkpointed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Plan:
    total_steps: int
    accumulation: int
    batch_size: int
    world_size: int
    num_examples: int
    seed: int
    ti_steps: int        # textual inversion runs for steps [0, ti_steps)
    te_steps: int        # text-encoder LoRA trains for steps [0, te_steps)
    unet_frozen_during_ti: bool

    @classmethod
    def from_config(cls, cfg: dict[str, Any], num_examples: int, world_size: int) -> Plan:
        per_step = cfg["batch_size"] * world_size * cfg["gradient_accumulation_steps"]
        if cfg["num_train_epochs"]:
            total = math.ceil(cfg["num_train_epochs"] * num_examples / per_step)
        else:
            total = cfg["max_train_steps"]
        ti = math.ceil(cfg["train_text_encoder_ti_frac"] * total) if cfg[
            "train_text_encoder_ti"] else 0
        te = math.ceil(cfg["train_text_encoder_frac"] * total) if cfg[
            "train_text_encoder"] else 0
        return cls(total, cfg["gradient_accumulation_steps"], cfg["batch_size"], world_size,
                   num_examples, cfg["seed"], ti, te,
                   bool(cfg["disable_unet_during_ti_training"]) and ti > 0)

    def indices(self, step: int, micro: int, rank: int) -> list[int]:
        """Example indices for one worker's micro-batch: consecutive slices of a per-epoch
        permutation, so every example is seen once per epoch across all workers."""
        start = ((step * self.accumulation + micro) * self.world_size + rank) * self.batch_size
        out = []
        for k in range(start, start + self.batch_size):
            epoch, pos = divmod(k, self.num_examples)
            out.append(int(self._permutation(epoch)[pos]))
        return out

    def epoch(self, step: int) -> float:
        seen = step * self.accumulation * self.world_size * self.batch_size
        return seen / self.num_examples

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)

    def seed_for(self, step: int, micro: int, rank: int) -> int:
        """A per-draw seed (noise, timesteps, augmentation, caption dropout)."""
        return int(np.random.SeedSequence([self.seed, step, micro, rank]).generate_state(1)[0])

    def ti_active(self, step: int) -> bool:
        return step < self.ti_steps

    def te_active(self, step: int) -> bool:
        return step < self.te_steps

    def unet_active(self, step: int) -> bool:
        return not (self.unet_frozen_during_ti and self.ti_active(step))

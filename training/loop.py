"""The per-worker training loop that Ray Train runs (`train_loop_per_worker`).

Data parallel: the UNet is wrapped in DDP by Ray Train (`prepare_model`); the text side (new
token rows, text-encoder LoRA) is averaged with one explicit all-reduce per step over just the
rows that train, instead of DDP over two whole text encoders whose vocabulary matrices would
otherwise be all-reduced in full. Each worker reports loss/step/lr every step; rank 0 writes a
checkpoint every ``checkpoint_every_n_steps`` and the final artifacts.
"""

from __future__ import annotations

import contextlib
import logging
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training import adapters as A
from training.checkpoint import Trained, export, restore_checkpoint, save_checkpoint
from training.models import cast_trainable_fp32, load_parts
from training.objective import NoiseDraw, diffusion_loss, encode_prompts, time_ids
from training.schedule import Plan
from training.tokens import NewTokens

log = logging.getLogger(__name__)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray
    import ray.train
    import ray.train.torch

    cfg = config["job"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    data = config["data"]
    if isinstance(data, ray.ObjectRef):
        data = ray.get(data)
    device = ray.train.torch.get_device()
    run = Run(cfg, data, device, rank, world)
    checkpoint = ray.train.get_checkpoint()
    resumed_from = None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            run.start_step = restore_checkpoint(run.trained, Path(d), optimizer=run.optimizer,
                                                lr_scheduler=run.lr_scheduler)
        resumed_from = run.start_step
        log.info("rank %d resumed at step %d", rank, run.start_step)
    run.unet = ray.train.torch.prepare_model(run.trained.unet, move_to_device=False)
    every = cfg["ray"]["checkpoint_every_n_steps"]
    report_every = cfg["ray"]["report_every_n_steps"]
    for step in range(run.start_step, run.plan.total_steps):
        metrics = run.step(step)
        metrics["resumed_from"] = resumed_from
        metrics["time"] = time.time()  # step intervals incl. reporting (bench/)
        done = step + 1 == run.plan.total_steps
        checkpoint_now = done or (step + 1) % every == 0
        # Every worker must make the same report calls (they are matched round by round),
        # so the choice depends on the step only.
        if not (checkpoint_now or (step + 1) % report_every == 0):
            continue
        if rank == 0 and checkpoint_now:
            with tempfile.TemporaryDirectory(prefix="genserve-ckpt-") as d:
                save_checkpoint(run.trained, Path(d), step=step + 1, optimizer=run.optimizer,
                                lr_scheduler=run.lr_scheduler, resumed_from=resumed_from)
                if done:
                    export(run.trained, Path(d))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)


class Run:
    """One worker's models, optimizer and data; `step(k)` runs optimizer step ``k``."""

    def __init__(self, cfg: dict[str, Any], data, device: torch.device, rank: int,
                 world: int):
        torch.manual_seed(cfg["seed"])  # identical adapter init on every worker
        self.cfg, self.data, self.device, self.rank = cfg, data, device, rank
        self.parts = load_parts(cfg, device)
        p = self.parts
        gen = torch.Generator().manual_seed(cfg["seed"])
        tokens = None
        if cfg["train_text_encoder_ti"]:
            tokens = NewTokens.add(cfg["token_abstraction"],
                                   cfg["num_new_tokens_per_abstraction"], p.tokenizers,
                                   p.text_encoders, gen)
        unet_config = A.unet_adapter_config(cfg) if cfg["use_lora"] else None
        if unet_config is not None:
            A.add_adapter(p.unet, unet_config, what="target_unet_modules")
        else:
            p.unet.requires_grad_(True)
        te_config = None
        if cfg["train_text_encoder"]:
            te_config = A.text_encoder_adapter_config(cfg)
            for encoder in p.text_encoders:
                A.add_adapter(encoder, te_config, what="target_text_encoder_modules")
        if tokens is not None:
            tokens.set_trainable(True)
        cast_trainable_fp32(p.unet, *p.text_encoders)
        self.trained = Trained(p.unet, p.text_encoders, tokens, cfg, unet_config, te_config)
        self.unet = p.unet
        self.unet_params = A.trainable(p.unet)
        self.te_params = [q for e in p.text_encoders for q in A.trainable(e)
                          if tokens is None or all(q is not w for w in tokens.parameters())]
        self.plan = Plan.from_config(cfg, len(data.pixels), world)
        self.optimizer = _optimizer(cfg, self.unet_params, self.te_params,
                                    tokens.parameters() if tokens else [])
        self.lr_scheduler = _lr_scheduler(cfg, self.optimizer, self.plan.total_steps)
        self.start_step = 0
        self.latent_cache: dict[int, torch.Tensor] = {}
        h, w = cfg["resolution_height"], cfg["resolution_width"]
        self.target_size = (h, w)

    # -- one optimizer step ------------------------------------------------------------------

    def step(self, step: int) -> dict[str, Any]:
        started = time.perf_counter()
        plan, tokens = self.plan, self.trained.tokens
        if tokens is not None:
            tokens.set_trainable(plan.ti_active(step))
        losses = []
        for micro in range(plan.accumulation):
            last = micro + 1 == plan.accumulation
            sync = contextlib.nullcontext() if last or not hasattr(self.unet, "no_sync") \
                else self.unet.no_sync()
            with sync:
                loss = self._loss(step, micro)
                (loss / plan.accumulation).backward()
            losses.append(loss.detach())
        self._sync_text_grads()
        if not plan.unet_active(step):
            for q in self.unet_params:
                q.grad = None  # frozen while textual inversion runs: no update, no decay
        if not plan.te_active(step):
            for q in self.te_params:
                q.grad = None
        params = [q for g in self.optimizer.param_groups for q in g["params"]
                  if q.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg["max_grad_norm"])
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if tokens is not None:
            tokens.restore_frozen_rows()
        loss = torch.stack(losses).mean()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(loss)
            loss /= torch.distributed.get_world_size()
        return {"step": step + 1, "loss": float(loss), "lr": self.lr_scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm), "epoch": round(plan.epoch(step + 1), 4),
                "ti_active": plan.ti_active(step), "total_steps": plan.total_steps,
                "step_seconds": round(time.perf_counter() - started, 4)}

    def _loss(self, step: int, micro: int) -> torch.Tensor:
        cfg, data, plan, p = self.cfg, self.data, self.plan, self.parts
        seed = plan.seed_for(step, micro, self.rank)
        rng = random.Random(seed)
        idx = plan.indices(step, micro, self.rank)
        latents = self._latents(data.pixels, idx, rng, "instance")
        captions = [_dropout(data.captions[i], cfg["caption_dropout"], rng) for i in idx]
        masks = torch.from_numpy(data.masks[idx])
        sizes = [data.original_sizes[i] for i in idx]
        crops = [data.crops[i] for i in idx]
        n_instance = len(idx)
        if data.class_pixels is not None:
            # Pair each instance example with a class example: one forward pass for both.
            cidx = [i % len(data.class_pixels) for i in idx]
            latents = torch.cat([latents, self._latents(data.class_pixels, cidx, rng, "class")])
            captions += [data.class_captions[i] for i in cidx]
            masks = torch.cat([masks, torch.from_numpy(data.class_masks[cidx])])
            sizes += [self.target_size] * len(cidx)
            crops += [(0, 0)] * len(cidx)
        text_grad = plan.ti_active(step) or plan.te_active(step)
        with torch.set_grad_enabled(text_grad), self._autocast():
            hidden, pooled = encode_prompts(captions, p.tokenizers, p.text_encoders,
                                            self.device)
        gen = torch.Generator().manual_seed(seed)
        draw = NoiseDraw.sample(latents, gen, t_min=cfg["min_timestep_trained"],
                                t_max=cfg["max_timestep_trained"],
                                noise_offset=cfg["noise_offset"])
        ids = time_ids(sizes, crops, self.target_size, self.device, hidden.dtype)
        with self._autocast():
            per_example = diffusion_loss(self.unet, p.scheduler, latents.to(hidden.dtype),
                                         draw, hidden, pooled, ids, masks, cfg["snr_gamma"])
        loss = per_example[:n_instance].mean()
        if len(per_example) > n_instance:
            loss = loss + cfg["prior_loss_weight"] * per_example[n_instance:].mean()
        return loss

    def _latents(self, pixels: np.ndarray, idx: list[int], rng: random.Random,
                 kind: str) -> torch.Tensor:
        from PIL import Image

        from training.data import augment

        cfg, vae = self.cfg, self.parts.vae
        cache = cfg["cache_latents"]
        out = []
        for i in idx:
            key = (kind, i)
            if cache and key in self.latent_cache:
                out.append(self.latent_cache[key])
                continue
            image = Image.fromarray(pixels[i])
            if not cache:  # cached latents fix each image's augmentation (documented)
                image = augment(image, random_flip=cfg["random_flip"], rng=rng,
                                rotation_range=(cfg["random_rotation_start"],
                                                cfg["random_rotation_end"]))
            x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)
            x = x.permute(2, 0, 1).unsqueeze(0).to(self.device, self.parts.vae_dtype)
            with torch.no_grad():
                dist = vae.encode(x).latent_dist
                gen = torch.Generator().manual_seed(rng.randrange(2**63))
                z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen).to(
                    dist.mean.device, dist.mean.dtype)
                z = (z * vae.config.scaling_factor).float()
            if cache:
                self.latent_cache[key] = z
            out.append(z)
        return torch.cat(out)

    def _sync_text_grads(self) -> None:
        """Average the text side's gradients across workers (the UNet's go through DDP)."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        world = dist.get_world_size()
        tokens = self.trained.tokens
        if tokens is not None and any(w.grad is not None for w in tokens.parameters()):
            rows = tokens.new_row_grads()
            for r in rows:
                dist.all_reduce(r)
                r /= world
            tokens.set_new_row_grads(rows)
        for q in self.te_params:
            if q.grad is not None:
                dist.all_reduce(q.grad)
                q.grad /= world

    def _autocast(self):
        if self.device.type == "cuda" and self.parts.weight_dtype != torch.float32:
            return torch.autocast("cuda", dtype=self.parts.weight_dtype)
        return contextlib.nullcontext()


def _dropout(caption: str, p: float, rng: random.Random) -> str:
    from training.data import caption_dropout

    return caption_dropout(caption, p, rng) if p else caption


def _optimizer(cfg: dict[str, Any], unet_params, te_params, token_params):
    groups = []
    if unet_params:
        groups.append({"params": unet_params, "lr": cfg["learning_rate"],
                       "weight_decay": cfg["adam_weight_decay"]})
    text = list(te_params) + list(token_params)
    if text:
        groups.append({"params": text, "lr": cfg["text_encoder_lr"],
                       "weight_decay": cfg["adam_weight_decay_text_encoder"]})
    betas = (cfg["adam_beta1"], cfg["adam_beta2"])
    if cfg["optimizer"] == "prodigy":
        from prodigyopt import Prodigy

        return Prodigy(groups, lr=cfg["learning_rate"], betas=betas, beta3=cfg["prodigy_beta3"],
                       eps=cfg["adam_epsilon"], decouple=cfg["prodigy_decouple"],
                       use_bias_correction=cfg["prodigy_use_bias_correction"],
                       safeguard_warmup=cfg["prodigy_safeguard_warmup"])
    return torch.optim.AdamW(groups, lr=cfg["learning_rate"], betas=betas,
                             eps=cfg["adam_epsilon"])


def _lr_scheduler(cfg: dict[str, Any], optimizer, total_steps: int):
    from diffusers.optimization import get_scheduler

    return get_scheduler(cfg["lr_scheduler"], optimizer,
                         num_warmup_steps=cfg["lr_warmup_steps"],
                         num_training_steps=total_steps, num_cycles=cfg["lr_num_cycles"],
                         power=cfg["lr_power"])

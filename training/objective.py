"""The denoising objective: SDXL text conditioning, noise, timesteps and the weighted loss.

The same function scores a batch during training and in the quality check (fixed noise and
timesteps), so "the loss went down" is measured with exactly the loss that was trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def encode_prompts(captions: list[str], tokenizers: list, text_encoders: list,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's conditioning: both encoders' penultimate hidden states side by side, and the
    second encoder's pooled (projected) output. Gradients flow (textual inversion needs them).
    """
    states, pooled = [], None
    for tokenizer, encoder in zip(tokenizers, text_encoders, strict=True):
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids.to(device)
        out = encoder(ids, output_hidden_states=True)
        pooled = out[0]  # the last encoder's text_embeds (CLIPTextModelWithProjection)
        states.append(out.hidden_states[-2])
    return torch.cat(states, dim=-1), pooled


def time_ids(original_sizes: list[tuple[int, int]], crops: list[tuple[int, int]],
             target: tuple[int, int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """SDXL micro-conditioning per example: original size, crop top-left, target size."""
    rows = [list(o) + list(c) + list(target) for o, c in zip(original_sizes, crops, strict=True)]
    return torch.tensor(rows, device=device, dtype=dtype)


@dataclass
class NoiseDraw:
    """Noise and timesteps for one batch, drawn from a seeded generator so a step's draw does
    not depend on what ran before it (resuming gives the same numbers)."""

    noise: torch.Tensor
    timesteps: torch.Tensor

    @classmethod
    def sample(cls, latents: torch.Tensor, generator: torch.Generator, *, t_min: int,
               t_max: int, noise_offset: float) -> NoiseDraw:
        shape, n = latents.shape, latents.shape[0]
        noise = torch.randn(shape, generator=generator)
        if noise_offset:
            # Offset noise: a per-channel constant lets the model shift overall brightness.
            noise = noise + noise_offset * torch.randn((n, shape[1], 1, 1), generator=generator)
        timesteps = torch.randint(t_min, t_max, (n,), generator=generator)
        return cls(noise.to(latents.device, latents.dtype), timesteps.to(latents.device))


def snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023): min(SNR, γ)/SNR for ε-prediction,
    min(SNR, γ)/(SNR + 1) for v-prediction."""
    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alphas / (1.0 - alphas)
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    if scheduler.config.prediction_type == "v_prediction":
        return clipped / (snr + 1.0)
    return clipped / snr


def diffusion_loss(unet, scheduler, latents: torch.Tensor, draw: NoiseDraw,
                   hidden: torch.Tensor, pooled: torch.Tensor, add_time_ids: torch.Tensor,
                   masks: torch.Tensor | None, snr_gamma: float | None) -> torch.Tensor:
    """Per-example loss, shape ``[batch]``: masked MSE (weights are a per-pixel mean over the
    mask, so a small face region weighs as much as a full-frame one), times Min-SNR weights.
    """
    noisy = scheduler.add_noise(latents, draw.noise, draw.timesteps)
    pred = unet(noisy, draw.timesteps, hidden,
                added_cond_kwargs={"text_embeds": pooled, "time_ids": add_time_ids}).sample
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, draw.noise, draw.timesteps)
    else:
        target = draw.noise
    err = F.mse_loss(pred.float(), target.float(), reduction="none")
    if masks is None:
        per_example = err.mean(dim=(1, 2, 3))
    else:
        m = masks.to(err.device, err.dtype).unsqueeze(1).expand_as(err)
        per_example = (err * m).sum(dim=(1, 2, 3)) / m.sum(dim=(1, 2, 3)).clamp_min(1e-8)
    if snr_gamma:
        per_example = per_example * snr_weights(scheduler, draw.timesteps, snr_gamma)
    return per_example

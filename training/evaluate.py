"""Did training learn the subject? The denoising loss on the training photos at fixed
timesteps and fixed noise, before vs after: the same images, the same draws, only the weights
differ, so the drop is the model's, not sampling luck."""

from __future__ import annotations

import numpy as np
import torch

from training.objective import NoiseDraw, diffusion_loss, encode_prompts, time_ids

EVAL_TIMESTEPS = (100, 300, 500, 700, 900)


@torch.no_grad()
def denoising_loss(run, *, timesteps: tuple[int, ...] = EVAL_TIMESTEPS, seed: int = 0) -> float:
    """Mean unmasked, unweighted ε-MSE of ``run``'s current weights over every training photo
    (its own caption, no augmentation) × ``timesteps``. ``run`` is a `training.loop.Run`."""
    p, data = run.parts, run.data
    unet = getattr(run.unet, "module", run.unet)  # DDP-wrapped or not
    losses = []
    for i in range(len(data.pixels)):
        x = torch.from_numpy(np.asarray(data.pixels[i], dtype=np.float32) / 127.5 - 1.0)
        x = x.permute(2, 0, 1).unsqueeze(0).to(run.device, p.vae_dtype)
        z = (p.vae.encode(x).latent_dist.mean * p.vae.config.scaling_factor).float()
        hidden, pooled = encode_prompts([data.captions[i]], p.tokenizers, p.text_encoders,
                                        run.device)
        ids = time_ids([data.original_sizes[i]], [data.crops[i]], run.target_size, run.device,
                       hidden.dtype)
        for t in timesteps:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + i * 1009 + t)
            draw = NoiseDraw(torch.randn(z.shape, generator=gen).to(z.device, z.dtype),
                             torch.tensor([t], device=run.device))
            losses.append(float(diffusion_loss(unet, p.scheduler, z.to(hidden.dtype), draw,
                                               hidden, pooled, ids, None, None)[0]))
    return float(np.mean(losses))

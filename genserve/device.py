"""Where models run: CUDA when torch sees a GPU, otherwise CPU, and the dtype to match.

Ray's GPU resources are logical, so a replica with ``num_gpus: 0.5`` on a CPU-only test node
still lands here with no CUDA device and must fall back to CPU instead of failing.
"""

from __future__ import annotations

import torch

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def resolve_device(preferred: str = "auto") -> torch.device:
    """``auto`` → ``cuda`` if available else ``cpu``; an explicit name is taken as given."""
    if preferred == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preferred)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` → fp16 on CUDA (what SDXL ships as a variant), fp32 on CPU (fp16 CPU kernels
    are slow or missing)."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"`dtype` must be one of {['auto', *DTYPES]} but is {name!r}.")
    return DTYPES[name]


def cpu_generator(seed: int) -> torch.Generator:
    # Noise is drawn on the CPU and moved, so one seed gives the same image on CPU and GPU.
    return torch.Generator("cpu").manual_seed(seed)

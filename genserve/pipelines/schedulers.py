"""The DataCrunch scheduler names mapped to diffusers schedulers.

A scheduler holds per-call state (`set_timesteps`), so every request gets a fresh one built from
the model's own scheduler config rather than mutating a shared instance.
"""

from __future__ import annotations

from typing import Any

SCHEDULER_NAMES = ("DDIM", "K_EULER", "EulerA", "DPMSolverMultistep", "KarrasDPM", "PNDM",
                   "HeunDiscrete")
TIMESTEP_SPACINGS = ("linspace", "trailing", "leading")


def make_scheduler(name: str, timestep_spacing: str, model_config: dict[str, Any]):
    """Build scheduler ``name`` from the model's scheduler config with the given spacing."""
    import diffusers

    table = {
        "DDIM": (diffusers.DDIMScheduler, {}),
        "K_EULER": (diffusers.EulerDiscreteScheduler, {}),
        "EulerA": (diffusers.EulerAncestralDiscreteScheduler, {}),
        "DPMSolverMultistep": (diffusers.DPMSolverMultistepScheduler, {}),
        "KarrasDPM": (diffusers.DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
        "PNDM": (diffusers.PNDMScheduler, {}),
        "HeunDiscrete": (diffusers.HeunDiscreteScheduler, {}),
    }
    if name not in table:
        raise ValueError(f"`scheduler` must be one of {list(table)} but is {name!r}.")
    if timestep_spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"`timestep_spacing` must be one of {list(TIMESTEP_SPACINGS)} "
                         f"but is {timestep_spacing!r}.")
    cls, extra = table[name]
    return cls.from_config(model_config, timestep_spacing=timestep_spacing, **extra)

"""Tiny public LoRAs: stand-ins for files like stabilityai's
``sd_xl_offset_example-lora_1.0.safetensors``, for the tiny SDXL base.

Written in kohya's key layout (``lora_unet_<module_path_with_underscores>.lora_down.weight`` /
``.lora_up.weight`` / ``.alpha``), the format most public SDXL LoRAs ship in, so the serving
code reads them through diffusers' kohya conversion exactly as it would the real ones.
"""

from __future__ import annotations

from pathlib import Path

import torch

from genserve.tiny.sdxl import base_unet

RANK = 4
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # every attention projection, as the offset LoRA
# Both factors ~N(0, 0.3²): at rank 4 the update is about as large as the tiny UNet's own
# weights, so the image visibly changes (a peft-initialised LoRA would change nothing).
STD = 0.3
SEED = 0


def _kohya_state(seed: int) -> dict[str, torch.Tensor]:
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    unet = base_unet()  # only the architecture matters: module names and shapes
    inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=RANK, target_modules=TARGETS), unet,
                            adapter_name="default")
    generator = torch.Generator().manual_seed(seed)
    state = {f"unet.{key}": torch.randn(value.shape, generator=generator) * STD
             for key, value in sorted(get_peft_model_state_dict(unet).items())}
    # Adds `.alpha` = rank per module (scale 1), as kohya's trainer writes by default.
    return convert_state_dict_to_kohya(state)


def build_public_loras(out: Path) -> None:
    """``out/offset.safetensors``: a deterministic kohya-format LoRA for the tiny base."""
    from safetensors.torch import save_file

    # kohya stores alphas as float scalars (diffusers' converter writes ints).
    state = {k: (v.float() if k.endswith(".alpha") else v).contiguous()
             for k, v in _kohya_state(SEED).items()}
    save_file(state, str(Path(out) / "offset.safetensors"), metadata={"format": "pt"})

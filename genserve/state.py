"""Where genserve keeps its state on a node: ``$GENSERVE_STATE_DIR``, else ``~/.genserve``.

One helper so the usage log, the personalization job's outputs and the SDXL deployments that
serve them agree on the same directories.
"""

from __future__ import annotations

import os
from pathlib import Path

LORAS_SUBDIR = "loras"


def state_dir() -> Path:
    """The state directory (not created here)."""
    return Path(os.environ.get("GENSERVE_STATE_DIR", Path.home() / ".genserve"))


def default_lora_dir() -> Path:
    """Where trained LoRAs land (``<lora_dir>/<lora_id>/``) and where SDXL serves them from."""
    return state_dir() / LORAS_SUBDIR

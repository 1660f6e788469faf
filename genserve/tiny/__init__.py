"""Tiny offline models: every pipeline's stand-in, built in seconds with no download.

`build(out_dir)` writes one directory per model role; the serving code is pointed at those
directories instead of hub ids (see `genserve.models`). Nothing here is imported at serving
time unless the tiny switch is on.
"""

from __future__ import annotations

import importlib
import json
import shutil
import time
from pathlib import Path

# Bump when a builder changes, so cached directories from older builds are rebuilt.
FACTORY_VERSION = 7

# role → "module:function"; the role is also the directory name the app builder maps to.
BUILDERS: dict[str, str] = {
    "sdxl-base": "genserve.tiny.sdxl:build_base",
    "sdxl-refiner": "genserve.tiny.sdxl:build_refiner",
    "sdxl-vae": "genserve.tiny.sdxl:build_vae",
    "safety-checker": "genserve.tiny.sdxl:build_safety_checker",
    "llm": "genserve.tiny.llm:build_llm",
    "svd": "genserve.tiny.video:build_svd",
    "bark": "genserve.tiny.tts:build_bark",
    "vits": "genserve.tiny.tts:build_vits",
    "shap-e": "genserve.tiny.shap_e:build_shap_e",
    "captioner": "genserve.tiny.vision:build_captioner",
    "clipseg": "genserve.tiny.vision:build_clipseg",
    "sdxl-public-loras": "genserve.tiny.sdxl_loras:build_public_loras",
}


def _builder(role: str):
    module, _, func = BUILDERS[role].partition(":")
    return getattr(importlib.import_module(module), func)


def build(out_dir: str | Path, roles: list[str] | None = None, force: bool = False) -> dict[str, Path]:
    """Build the tiny models into ``out_dir/<role>``; cached builds of this version are reused.

    >>> paths = build("/tmp/genserve-tiny")  # doctest: +SKIP
    >>> paths["sdxl-base"]                    # doctest: +SKIP
    PosixPath('/tmp/genserve-tiny/sdxl-base')
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role in roles or list(BUILDERS):
        if role not in BUILDERS:
            raise KeyError(f"unknown tiny model role {role!r}; known: {sorted(BUILDERS)}")
        target = out / role
        stamp = target / "genserve_tiny.json"
        if force or not _stamp_ok(stamp):
            # Build next to the target and rename, so a crash never leaves a half-written model
            # that a later run would take for a finished one.
            tmp = out / f".{role}.building"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            started = time.perf_counter()
            _builder(role)(tmp)
            (tmp / "genserve_tiny.json").write_text(json.dumps(
                {"role": role, "version": FACTORY_VERSION,
                 "build_seconds": round(time.perf_counter() - started, 2)}))
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
        paths[role] = target
    return paths


def _stamp_ok(stamp: Path) -> bool:
    try:
        return json.loads(stamp.read_text()).get("version") == FACTORY_VERSION
    except (OSError, ValueError):
        return False

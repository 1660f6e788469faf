"""Reproducibility records: everything needed to regenerate a result, carried with it.

A record names the weights (hub id and the snapshot's commit hash, or a local directory and a
hash of its config files), the scheduler (class and full config), the seed, every request
parameter and the library versions. Building it is split by cost: `model_source` and
`library_versions` run once per model load (file hashing, metadata lookups); per request only
dicts are merged. No Ray and no torch import here: pipelines, deployments and the ingress all
use it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

LIBRARIES = ("torch", "diffusers", "transformers", "peft", "ray", "genserve")
# The files that define a model's architecture and preprocessing; weights are not hashed (GBs
# per request-time-free load would be too slow) — the hub commit pins those.
CONFIG_NAMES = ("model_index.json", "config.json", "scheduler_config.json",
                "preprocessor_config.json", "tokenizer_config.json", "generation_config.json")


class ModelSource(BaseModel):
    role: str = Field(description="What the weights are used for.", examples=["base"])
    id: str = Field(description="The model id as configured: a hub id or a local directory.",
                    examples=["stabilityai/stable-diffusion-xl-base-1.0"])
    revision: str | None = Field(
        None, description="The hub snapshot's commit hash when loaded from the hub cache, "
        "else the configured revision (null: the default branch).",
        examples=["462165984030d82259a11f4367a4eed129e94a7b"])
    path: str | None = Field(None, description="The directory the weights were read from.")
    config_sha256: str | None = Field(
        None, description="SHA-256 over the model's config files (names and bytes), so a "
        "local directory changed in place does not pass for the same model.")


class SchedulerRecord(BaseModel):
    name: str = Field(description="The request's scheduler name.", examples=["DDIM"])
    class_name: str = Field(description="The diffusers class it maps to.",
                            examples=["DDIMScheduler"])
    config: dict[str, Any] = Field(description="The scheduler's full config as run.")


class Reproducibility(BaseModel):
    """How this result was made; send ``parameters`` back (same weights, same versions, same
    device type) to get the same output."""

    pipeline: str = Field(description="The catalog endpoint that ran.", examples=["sdxl"])
    seed: int | None = Field(description="The seed actually used (also when the request "
                             "left it out).", examples=[1234])
    parameters: dict[str, Any] = Field(
        description="The request as sent, with `seed` filled in: send it back to regenerate. "
        "Large inputs (images) appear as `<field>_sha256` instead of their bytes.")
    resolved_parameters: dict[str, Any] = Field(
        description="Every request parameter as run, defaults included (defaults may change "
        "between versions; this pins them).")
    models: list[ModelSource] = Field(description="The weights, per role, in run order.")
    scheduler: SchedulerRecord | None = Field(None, description="The sampler, for diffusion.")
    device: str | None = Field(None, description="Device type the models ran on; floating "
                               "point results differ between CPU and GPU.", examples=["cuda"])
    dtype: str | None = Field(None, description="Weights' dtype.", examples=["float16"])
    versions: dict[str, str | None] = Field(description="Library versions of the replica "
                                            "that ran the model.")


@functools.cache
def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries that shape the output (None: not installed). Read
    from package metadata, which imports nothing."""
    found: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def config_hash(root: Path) -> str | None:
    """SHA-256 over every config file under ``root`` (relative name + bytes, sorted)."""
    files = sorted(p for p in root.rglob("*") if p.name in CONFIG_NAMES and p.is_file())
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _hub_snapshot(model_id: str, revision: str | None) -> Path | None:
    """The cached snapshot directory the loader read (no network), None when not cached."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model_id, revision=revision, local_files_only=True))
    except Exception:
        return None


def model_source(role: str, model_id: str, revision: str | None = None) -> dict[str, Any]:
    """Where the weights of ``role`` came from, as a plain dict (crosses process boundaries).
    Call once per load: it reads and hashes the config files."""
    local = Path(model_id)
    if local.is_dir():
        return ModelSource(role=role, id=model_id, revision=revision,
                           path=str(local.resolve()), config_sha256=config_hash(local)
                           ).model_dump()
    snapshot = _hub_snapshot(model_id, revision)
    if snapshot is None:
        return ModelSource(role=role, id=model_id, revision=revision).model_dump()
    # The hub cache keeps each revision under snapshots/<commit hash>/.
    return ModelSource(role=role, id=model_id, revision=snapshot.name, path=str(snapshot),
                       config_sha256=config_hash(snapshot)).model_dump()


def scheduler_record(name: str, scheduler: Any) -> dict[str, Any]:
    """A built diffusers scheduler as a JSON-safe dict (its config holds tuples, numpy
    scalars and the like)."""
    config = json.loads(json.dumps(dict(scheduler.config), default=str))
    return SchedulerRecord(name=name, class_name=type(scheduler).__name__,
                           config=config).model_dump()


def request_parameters(body: BaseModel, seed: int | None, large: tuple[str, ...] = (),
                       *, defaults: bool = False) -> dict[str, Any]:
    """The request as JSON with ``seed`` filled in. Without ``defaults`` only the fields the
    caller set (what to send back: some validators treat an explicit value differently from
    the default, e.g. SDXL's ``refiner_ratio`` outside ensemble mode); with ``defaults`` every
    field as run. Each field in ``large`` (base64 images) becomes ``<field>_sha256`` so the
    record stays small."""
    params = body.model_dump(mode="json", exclude_unset=not defaults)
    for name in large:
        value = params.pop(name, None)
        if value is not None:
            params[f"{name}_sha256"] = hashlib.sha256(str(value).encode()).hexdigest()
    if "seed" in type(body).model_fields:
        params["seed"] = seed
    return params


def build(pipeline: str, body: BaseModel, seed: int | None, provenance: dict[str, Any],
          large: tuple[str, ...] = ()) -> Reproducibility:
    """The record for one result: ``provenance`` is what the deployments attached (models,
    scheduler, device, dtype, versions), ``body`` the validated request."""
    return Reproducibility(
        pipeline=pipeline, seed=seed, parameters=request_parameters(body, seed, large),
        resolved_parameters=request_parameters(body, seed, large, defaults=True),
        models=provenance.get("models", []), scheduler=provenance.get("scheduler"),
        device=provenance.get("device"), dtype=provenance.get("dtype"),
        versions=provenance.get("versions") or library_versions())


def placement_record(placement: Any) -> dict[str, str]:
    """``device``/``dtype`` of a `genserve.pipelines.loading.Placement` as strings."""
    return {"device": placement.device.type, "dtype": str(placement.dtype).removeprefix("torch.")}

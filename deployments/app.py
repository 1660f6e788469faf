"""The one wiring point: `serve_config.yaml` names `deployments.app:build`.

`build(args)` binds the whole graph; the same builder serves production, the demo and the
tests. The tiny switch (`tiny_models_dir`) points every model at the offline stand-ins built
by `genserve build-tiny`, with no other difference.
"""

# No `from __future__ import annotations` here: Serve detects typed builder args by the
# annotation being a real pydantic class, not a string.

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from deployments.ingress import Ingress
from deployments.sdxl import SafetyChecker, SDXLBase, SDXLRefiner


class SDXLArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_model: str = Field("stabilityai/stable-diffusion-xl-base-1.0",
                            description="Hub id or local directory of the SDXL base.")
    refiner_model: str = "stabilityai/stable-diffusion-xl-refiner-1.0"
    vae_model: str | None = Field("madebyollin/sdxl-vae-fp16-fix",
                                  description="VAE used when running in fp16.")
    safety_model: str = "CompVis/stable-diffusion-safety-checker"
    base_revision: str | None = Field(None, description="Pin the base's hub revision (commit).")
    refiner_revision: str | None = None
    safety_revision: str | None = None
    dtype: str = Field("auto", description="auto (fp16 on CUDA, fp32 on CPU), float16, "
                                           "bfloat16 or float32.")


class AppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tiny_models_dir: str | None = Field(
        None, description="Serve the tiny offline models from this directory instead of the "
        "hub models (demo and tests).")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL for the usage log; default SQLite in "
        "$GENSERVE_STATE_DIR (~/.genserve).")
    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0, description="Largest request body.")
    sdxl: SDXLArgs = SDXLArgs()


def tiny_models(args: AppArgs) -> AppArgs:
    """The same graph with every model id replaced by its tiny stand-in's directory."""
    root = args.tiny_models_dir.rstrip("/")
    sdxl = args.sdxl.model_copy(update={
        "base_model": f"{root}/sdxl-base", "refiner_model": f"{root}/sdxl-refiner",
        "vae_model": f"{root}/sdxl-vae", "safety_model": f"{root}/safety-checker",
        "base_revision": None, "refiner_revision": None, "safety_revision": None})
    return args.model_copy(update={"sdxl": sdxl})


def build(args: AppArgs) -> Application:
    if args.tiny_models_dir:
        args = tiny_models(args)
    s = args.sdxl
    base = SDXLBase.bind(s.base_model, vae_id=s.vae_model, revision=s.base_revision,
                         dtype=s.dtype)
    refiner = SDXLRefiner.bind(s.refiner_model, vae_id=s.vae_model, revision=s.refiner_revision,
                               dtype=s.dtype)
    safety = SafetyChecker.bind(s.safety_model, revision=s.safety_revision, dtype=s.dtype)
    return Ingress.bind(base, refiner, safety, database_url=args.database_url,
                        max_body_bytes=args.max_body_bytes)

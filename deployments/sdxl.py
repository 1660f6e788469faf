"""SDXL base, refiner and safety checker as Ray Serve deployments.

Thin on purpose: the constructor loads the pipeline once (the book's lifespan preload) and the
methods call it. GPU fractions, autoscaling and queue limits come from `serve_config.yaml`;
the decorator values are only the defaults for Python use without a config.
"""

from __future__ import annotations

from ray import serve

from genserve.pipelines.outputs import ImageBatch, LatentBatch
from genserve.pipelines.params import BaseParams, RefineParams


@serve.deployment(ray_actor_options={"num_gpus": 0.45}, max_ongoing_requests=2)
class SDXLBase:
    def __init__(self, model_id: str, vae_id: str | None = None, revision: str | None = None,
                 dtype: str = "auto"):
        from genserve.pipelines.sdxl_base import SDXLBasePipeline

        self.pipeline = SDXLBasePipeline(model_id, vae_id=vae_id, revision=revision, dtype=dtype)

    def generate(self, params: BaseParams) -> LatentBatch | ImageBatch:
        return self.pipeline.generate(params)

    def check_health(self) -> None:
        self.pipeline.check_health()


@serve.deployment(ray_actor_options={"num_gpus": 0.45}, max_ongoing_requests=2)
class SDXLRefiner:
    def __init__(self, model_id: str, vae_id: str | None = None, revision: str | None = None,
                 dtype: str = "auto"):
        from genserve.pipelines.sdxl_refiner import SDXLRefinerPipeline

        self.pipeline = SDXLRefinerPipeline(model_id, vae_id=vae_id, revision=revision,
                                            dtype=dtype)

    def refine(self, batch: LatentBatch, params: RefineParams) -> ImageBatch:
        return self.pipeline.refine(batch, params)

    def check_health(self) -> None:
        self.pipeline.check_health()


@serve.deployment(ray_actor_options={"num_gpus": 0.1}, max_ongoing_requests=8)
class SafetyChecker:
    def __init__(self, model_id: str, revision: str | None = None, dtype: str = "auto"):
        from genserve.pipelines.safety import SafetyCheckerPipeline

        self.pipeline = SafetyCheckerPipeline(model_id, revision=revision, dtype=dtype)

    def check(self, batch: ImageBatch) -> ImageBatch:
        return self.pipeline.check(batch)

    def check_health(self) -> None:
        self.pipeline.check_health()

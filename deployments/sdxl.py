"""SDXL base, refiner and safety checker as Ray Serve deployments.

Thin on purpose: the constructor loads the pipeline once (the book's lifespan preload) and the
methods call it. GPU fractions, autoscaling and queue limits come from `serve_config.yaml`;
the decorator values are only the defaults for Python use without a config.

LoRAs are Serve multiplexed models: the ingress sends ``multiplexed_model_id`` =
``id:<lora_id>`` / ``public:<name>`` so Serve routes to a replica that has the LoRA loaded,
and each replica keeps the ``max_loras_per_replica`` most recently used ones (LRU eviction
unloads them, see `genserve.pipelines.lora.LoadedLora`). The generation methods are async so
they can await the loader; the pipeline itself runs in a worker thread (`asyncio.to_thread`),
as Serve runs sync methods by default (RAY_SERVE_RUN_SYNC_IN_THREADPOOL), so the replica's
event loop stays free for health checks and the next request while a diffusion runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from ray import serve

from deployments.progress import stream_progress
from genserve import metrics
from genserve.errors import InvalidInput
from genserve.pipelines.outputs import ImageBatch, LatentBatch
from genserve.pipelines.params import BaseParams, RefineParams


def _account(batch: Any, deployment: str, stage: str) -> Any:
    """Record this stage's model time (``timings[stage]``, without time queued behind the LoRA
    lock) and add its GPU-seconds to what the batch carries; stream items pass unchanged."""
    if isinstance(batch, (ImageBatch, LatentBatch)) and stage in batch.timings:
        batch.gpu_seconds += metrics.observe_inference("sdxl", deployment, batch.timings[stage])
    return batch


class _LoraServing:
    """The multiplexed LoRA loader both SDXL stages share (a mixin: Serve binds the methods of
    the deployment class and its bases alike)."""

    def _init_loras(self, lora_dir: str | None, public_lora_dir: str | None,
                    max_loras_per_replica: int) -> None:
        from genserve.pipelines.lora import LoraStore
        from genserve.state import default_lora_dir

        self.lora_store = LoraStore(lora_dir or default_lora_dir(), public_lora_dir)
        # `@serve.multiplexed(max_num_models_per_replica=…)` is fixed when the class is
        # defined; applied here it takes the cache size from the YAML. The wrapper carries the
        # method's name, so Serve takes `self` as the multiplex owner: replica shutdown unloads
        # the LoRAs, and the wrapper reports this replica's LoRA ids to the controller for
        # routing (tests/test_lora_serving.py reads them back).
        self._load_lora = serve.multiplexed(max_num_models_per_replica=max_loras_per_replica)(
            type(self)._load_lora)

    async def _load_lora(self, key: str) -> Any:
        ref = self.lora_store.resolve_key(key)  # NotFound / InvalidInput name the field
        return await asyncio.to_thread(self.pipeline.loras.load, ref)

    async def _run_with_lora(self, adapter: str | None, run: Callable[[Any], Any]) -> Any:
        """``run(lora)`` in a worker thread, with the request's LoRA loaded and pinned."""
        if adapter is None:
            return await asyncio.to_thread(run, None)
        routed = serve.get_multiplexed_model_id()
        if routed != adapter:
            raise InvalidInput(f"`adapter` {adapter!r} must also be the request's multiplexed "
                               f"model id (got {routed!r}): call this handle with "
                               f".options(multiplexed_model_id={adapter!r})", "adapter")
        # A hit: this replica already holds it (the multiplexer returns it without loading).
        metrics.lora_lookup(type(self).__name__, adapter in self.pipeline.loras.loaded())
        lora = await self._load_lora(self, adapter)
        # No await between the cache lookup and the pin: an eviction can only retire it.
        with lora.in_use():
            return await asyncio.to_thread(run, lora)

    def loaded_loras(self) -> list[str]:
        """Multiplexed ids of the LoRAs this replica holds (loaded, not evicted)."""
        return self.pipeline.loras.loaded()


@serve.deployment(ray_actor_options={"num_gpus": 0.45}, max_ongoing_requests=2)
class SDXLBase(_LoraServing):
    def __init__(self, model_id: str, vae_id: str | None = None, revision: str | None = None,
                 dtype: str = "auto", lora_dir: str | None = None,
                 public_lora_dir: str | None = None, max_loras_per_replica: int = 8):
        from genserve.pipelines.sdxl_base import SDXLBasePipeline

        self.pipeline = SDXLBasePipeline(model_id, vae_id=vae_id, revision=revision, dtype=dtype)
        self._init_loras(lora_dir, public_lora_dir, max_loras_per_replica)

    async def generate(self, params: BaseParams) -> LatentBatch | ImageBatch:
        return _account(await self._run_with_lora(
            params.adapter, lambda lora: self.pipeline.generate(params, lora=lora)),
            "SDXLBase", "base")

    async def generate_stream(self, params: BaseParams) -> AsyncIterator[Any]:
        """`generate` as a stream: `Progress` per denoising step, then the batch."""
        async for item in stream_progress("base", lambda on_step: self._run_with_lora(
                params.adapter,
                lambda lora: self.pipeline.generate(params, on_step=on_step, lora=lora))):
            yield _account(item, "SDXLBase", "base")

    def check_health(self) -> None:
        self.pipeline.check_health()


@serve.deployment(ray_actor_options={"num_gpus": 0.45}, max_ongoing_requests=2)
class SDXLRefiner(_LoraServing):
    def __init__(self, model_id: str, vae_id: str | None = None, revision: str | None = None,
                 dtype: str = "auto", lora_dir: str | None = None,
                 public_lora_dir: str | None = None, max_loras_per_replica: int = 8):
        from genserve.pipelines.sdxl_refiner import SDXLRefinerPipeline

        self.pipeline = SDXLRefinerPipeline(model_id, vae_id=vae_id, revision=revision,
                                            dtype=dtype)
        self._init_loras(lora_dir, public_lora_dir, max_loras_per_replica)

    async def refine(self, batch: LatentBatch, params: RefineParams) -> ImageBatch:
        return _account(await self._run_with_lora(
            params.adapter, lambda lora: self.pipeline.refine(batch, params, lora=lora)),
            "SDXLRefiner", "refiner")

    async def refine_stream(self, batch: LatentBatch, params: RefineParams
                            ) -> AsyncIterator[Any]:
        """`refine` as a stream: `Progress` per denoising step, then the batch."""
        async for item in stream_progress("refiner", lambda on_step: self._run_with_lora(
                params.adapter,
                lambda lora: self.pipeline.refine(batch, params, on_step=on_step, lora=lora))):
            yield _account(item, "SDXLRefiner", "refiner")

    def check_health(self) -> None:
        self.pipeline.check_health()


@serve.deployment(ray_actor_options={"num_gpus": 0.1}, max_ongoing_requests=8)
class SafetyChecker:
    def __init__(self, model_id: str, revision: str | None = None, dtype: str = "auto"):
        from genserve.pipelines.safety import SafetyCheckerPipeline

        self.pipeline = SafetyCheckerPipeline(model_id, revision=revision, dtype=dtype)

    def check(self, batch: ImageBatch) -> ImageBatch:
        return _account(self.pipeline.check(batch), "SafetyChecker", "safety")

    def check_health(self) -> None:
        self.pipeline.check_health()

"""SDXL composition: base → (refiner) → (safety), as chained deployment handle calls."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from ray.serve.handle import DeploymentHandle, DeploymentResponse

from genserve.pipelines.params import BaseParams, RefineParams
from genserve.schemas.sdxl import GenerateRequest, GenerateResponse


@dataclass
class Plan:
    """One request's stage parameters: the base call, the refiner call (None: base only)."""

    base: BaseParams
    refine: RefineParams | None
    adapter: str | None


def plan(body: GenerateRequest, seed: int) -> Plan:
    from genserve.pipelines.params import adapter_key

    width, height = body.output_size()
    adapter = adapter_key(body.lora_id, body.lora_name)
    base_p = BaseParams(
        prompt=body.prompt, negative_prompt=body.negative_prompt, height=height, width=width,
        steps=body.num_inference_steps, guidance_scale=body.guidance_scale,
        num_images=body.num_images_per_prompt, seed=seed, scheduler=body.scheduler,
        timestep_spacing=body.timestep_spacing, init_image=body.init_image,
        strength=body.strength, adapter=adapter, lora_scale=body.lora_scale)
    refine = RefineParams(
        prompt=body.prompt, negative_prompt=body.negative_prompt, seed=seed,
        scheduler=body.scheduler, timestep_spacing=body.timestep_spacing, adapter=adapter)
    if body.mode == "ensemble":
        # One trajectory split at 1 − ratio: same step count, same guidance throughout.
        split = 1.0 - body.refiner_ratio
        base_p.denoising_end, base_p.output = split, "latent"
        refine.denoising_start, refine.steps = split, body.num_inference_steps
        refine.guidance_scale = body.guidance_scale
    elif body.mode == "two_step":
        base_p.output = "latent"  # skip decode/encode: the refiner takes latents directly
        refine.steps = body.num_inference_steps_refiner
        refine.guidance_scale = body.guidance_scale_refiner
        refine.strength = body.refiner_strength
    else:
        refine = None
    return Plan(base_p, refine, adapter)


def _routed(handle: DeploymentHandle, adapter: str | None) -> DeploymentHandle:
    # Serve routes to a replica that already holds this LoRA (and loads it otherwise).
    return handle if adapter is None else handle.options(multiplexed_model_id=adapter)


def sdxl_images(base: DeploymentHandle, refiner: DeploymentHandle, safety: DeploymentHandle,
                body: GenerateRequest, seed: int) -> DeploymentResponse:
    """The composed graph for one request, as a `DeploymentResponse` of an `ImageBatch`. Not
    awaited: each stage's response goes straight into the next handle call (and callers can
    chain it further, e.g. into the video deployment)."""
    p = plan(body, seed)
    response = _routed(base, p.adapter).generate.remote(p.base)
    if p.refine is not None:
        response = _routed(refiner, p.adapter).refine.remote(response, p.refine)
    if body.safety_filter:
        response = safety.check.remote(response)
    return response


async def sdxl_images_with_progress(base: DeploymentHandle, refiner: DeploymentHandle,
                                    safety: DeploymentHandle, body: GenerateRequest, seed: int,
                                    progress: Callable[[str], None]):
    """`sdxl_images` for the queue: each stage streams ``progress("base: step k/N")`` while it
    runs. The latents come back here between the stages (a small tensor) instead of going
    straight to the refiner: the price of seeing the steps."""
    from deployments.progress import Progress

    p = plan(body, seed)
    result = None
    streams = [(_routed(base, p.adapter).options(stream=True).generate_stream, (p.base,))]
    if p.refine is not None:
        streams.append((_routed(refiner, p.adapter).options(stream=True).refine_stream,
                        (None, p.refine)))
    for method, args in streams:
        if result is not None:
            args = (result, *args[1:])
        async for item in method.remote(*args):
            if isinstance(item, Progress):
                progress(item.message())
            else:
                result = item
    if body.safety_filter:
        result = await safety.check.remote(result)
    return result


async def generate(base: DeploymentHandle, refiner: DeploymentHandle,
                   safety: DeploymentHandle, body: GenerateRequest,
                   progress: Callable[[str], None] | None = None) -> GenerateResponse:
    from genserve import repro, usage
    from genserve.images import png_data_uri
    from genserve.schemas.common import ImageOut

    started = time.perf_counter()
    seed = body.seed if body.seed is not None else random.randrange(2**32)
    if progress is None:
        batch = await sdxl_images(base, refiner, safety, body, seed)
    else:
        batch = await sdxl_images_with_progress(base, refiner, safety, body, seed, progress)
    images = [ImageOut(url=png_data_uri(img), width=img.shape[1], height=img.shape[0])
              for img in batch.images]
    models = batch.provenance.get("models") or [{}]
    usage.note(pipeline="sdxl", model=models[0].get("id"),
               lora_id=body.lora_id or body.lora_name, gpu_seconds=batch.gpu_seconds)
    return GenerateResponse(
        images=images, seed=seed, has_nsfw_concepts=batch.nsfw, mode=body.mode,
        timings={**{k: round(v, 4) for k, v in batch.timings.items()},
                 "total": round(time.perf_counter() - started, 4)},
        prompt=body.prompt,
        reproducibility=repro.build("sdxl", body, seed, batch.provenance,
                                    large=("seed_image",)))

"""SDXL composition: base → (refiner) → (safety), as chained deployment handle calls."""

from __future__ import annotations

import random
import time

from ray.serve.handle import DeploymentHandle, DeploymentResponse

from genserve.schemas.sdxl import GenerateRequest, GenerateResponse


def sdxl_images(base: DeploymentHandle, refiner: DeploymentHandle, safety: DeploymentHandle,
                body: GenerateRequest, seed: int) -> DeploymentResponse:
    """The composed graph for one request, as a `DeploymentResponse` of an `ImageBatch`. Not
    awaited: each stage's response goes straight into the next handle call (and callers can
    chain it further, e.g. into the video deployment)."""
    from genserve.pipelines.params import BaseParams, RefineParams, adapter_key

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
    if adapter is not None:
        # Serve routes to a replica that already holds this LoRA (and loads it otherwise).
        base = base.options(multiplexed_model_id=adapter)
        refiner = refiner.options(multiplexed_model_id=adapter)
    if body.mode == "ensemble":
        # One trajectory split at 1 − ratio: same step count, same guidance throughout.
        split = 1.0 - body.refiner_ratio
        base_p.denoising_end, base_p.output = split, "latent"
        refine.denoising_start, refine.steps = split, body.num_inference_steps
        refine.guidance_scale = body.guidance_scale
        response = refiner.refine.remote(base.generate.remote(base_p), refine)
    elif body.mode == "two_step":
        base_p.output = "latent"  # skip decode/encode: the refiner takes latents directly
        refine.steps = body.num_inference_steps_refiner
        refine.guidance_scale = body.guidance_scale_refiner
        refine.strength = body.refiner_strength
        response = refiner.refine.remote(base.generate.remote(base_p), refine)
    else:
        response = base.generate.remote(base_p)
    if body.safety_filter:
        response = safety.check.remote(response)
    return response


async def generate(base: DeploymentHandle, refiner: DeploymentHandle,
                   safety: DeploymentHandle, body: GenerateRequest) -> GenerateResponse:
    from genserve.images import png_data_uri
    from genserve.schemas.common import ImageOut

    started = time.perf_counter()
    seed = body.seed if body.seed is not None else random.randrange(2**32)
    batch = await sdxl_images(base, refiner, safety, body, seed)
    images = [ImageOut(url=png_data_uri(img), width=img.shape[1], height=img.shape[0])
              for img in batch.images]
    return GenerateResponse(
        images=images, seed=seed, has_nsfw_concepts=batch.nsfw, mode=body.mode,
        timings={**{k: round(v, 4) for k, v in batch.timings.items()},
                 "total": round(time.perf_counter() - started, 4)},
        prompt=body.prompt)

"""The HTTP ingress: FastAPI on Ray Serve, composing the pipeline deployments.

It validates (pydantic), authenticates, logs usage and routes; it never runs a model. Stages
are chained by passing one `DeploymentResponse` into the next handle call, so latents and
images flow replica to replica and only the final images come back here.
"""

# No `from __future__ import annotations`: Serve rebuilds these methods' signatures for FastAPI
# and needs the real classes, not strings.

import random
import time

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from genserve.http import errors
from genserve.http.middleware import ApiKeyMiddleware, BodyLimitMiddleware, UsageLogMiddleware
from genserve.schemas.sdxl import GenerateRequest, GenerateResponse

PUBLIC_PATHS = frozenset({"/healthz", "/docs", "/docs/oauth2-redirect", "/openapi.json"})

app = FastAPI(
    title="genserve",
    version="0.1.0",
    description="Self-hosted generative models on Ray Serve. Authenticate with "
                "`Authorization: Key <key>` (or `Bearer <key>`); `/healthz` and these docs "
                "are public.",
)
# Added in reverse order of execution: usage log (outermost, so it sees 401s and 413s too),
# then the body limit, then the key check, then the routes.
app.add_middleware(ApiKeyMiddleware)
app.add_middleware(BodyLimitMiddleware)
app.add_middleware(UsageLogMiddleware)
errors.install(app)


@serve.deployment(max_ongoing_requests=64)
@serve.ingress(app)
class Ingress:
    def __init__(self, base: DeploymentHandle, refiner: DeploymentHandle,
                 safety: DeploymentHandle, database_url: str | None = None,
                 max_body_bytes: int = 32 * 1024 * 1024):
        from genserve.http.auth import ApiKeys
        from genserve.usage import UsageLog

        self.base, self.refiner, self.safety = base, refiner, safety
        app.state.api_keys = ApiKeys.from_env()
        app.state.usage = UsageLog(database_url)
        app.state.max_body_bytes = max_body_bytes
        app.state.public_paths = PUBLIC_PATHS

    @app.get("/healthz", summary="Liveness of the ingress", tags=["ops"])
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.post("/generate", response_model=GenerateResponse, tags=["sdxl"],
              summary="SDXL text-to-image / image-to-image (DataCrunch-compatible)")
    async def generate(self, body: GenerateRequest) -> GenerateResponse:
        """Also the Python entry point: ``app_handle.generate.remote(GenerateRequest(...))``."""
        from genserve.images import png_data_uri
        from genserve.schemas.common import ImageOut

        started = time.perf_counter()
        seed = body.seed if body.seed is not None else random.randrange(2**32)
        batch = await self._compose(body, seed)
        images = [ImageOut(url=png_data_uri(img), width=img.shape[1], height=img.shape[0])
                  for img in batch.images]
        return GenerateResponse(
            images=images, seed=seed, has_nsfw_concepts=batch.nsfw, mode=body.mode,
            timings={**{k: round(v, 4) for k, v in batch.timings.items()},
                     "total": round(time.perf_counter() - started, 4)},
            prompt=body.prompt)

    async def _compose(self, body: GenerateRequest, seed: int):
        from genserve.pipelines.params import BaseParams, RefineParams

        width, height = body.output_size()
        base = BaseParams(
            prompt=body.prompt, negative_prompt=body.negative_prompt, height=height,
            width=width, steps=body.num_inference_steps, guidance_scale=body.guidance_scale,
            num_images=body.num_images_per_prompt, seed=seed, scheduler=body.scheduler,
            timestep_spacing=body.timestep_spacing, init_image=body.init_image,
            strength=body.strength)
        refine = RefineParams(
            prompt=body.prompt, negative_prompt=body.negative_prompt, seed=seed,
            scheduler=body.scheduler, timestep_spacing=body.timestep_spacing)
        if body.mode == "ensemble":
            # One trajectory split at 1 − ratio: same steps count, same guidance throughout.
            split = 1.0 - body.refiner_ratio
            base.denoising_end, base.output = split, "latent"
            refine.denoising_start, refine.steps = split, body.num_inference_steps
            refine.guidance_scale = body.guidance_scale
            response = self.refiner.refine.remote(self.base.generate.remote(base), refine)
        elif body.mode == "two_step":
            base.output = "latent"  # skip decode/encode: the refiner takes latents directly
            refine.steps = body.num_inference_steps_refiner
            refine.guidance_scale = body.guidance_scale_refiner
            refine.strength = body.refiner_strength
            response = self.refiner.refine.remote(self.base.generate.remote(base), refine)
        else:
            response = self.base.generate.remote(base)
        if body.safety_filter:
            response = self.safety.check.remote(response)
        return await response

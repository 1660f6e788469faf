"""The book's approach, for `bench.fastapi_vs_serve`: one FastAPI/uvicorn process that loads
SDXL base, refiner and safety checker at startup (the lifespan preload) and calls them inline
in the route, with no Ray at all.

The route runs the same stages with the same parameters as genserve's ingress does through
its handles (`deployments.routes.sdxl.plan`) and answers the same `GenerateResponse` (PNG data
URIs). It is a plain ``def``: FastAPI runs it on its thread pool, so concurrent requests run
side by side as they would in a typical single-process deployment.

    .venv/bin/python -m bench.plain_app --port 8011   # then POST /generate
"""

from __future__ import annotations

import argparse
import contextlib
import random
import time
from pathlib import Path

from fastapi import FastAPI

from genserve.schemas.sdxl import GenerateRequest, GenerateResponse


def create_app(models_dir: Path, threads: int) -> FastAPI:
    """The app; its models load when uvicorn starts it (FastAPI lifespan)."""
    pipelines = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        import torch

        from genserve.pipelines.safety import SafetyCheckerPipeline
        from genserve.pipelines.sdxl_base import SDXLBasePipeline
        from genserve.pipelines.sdxl_refiner import SDXLRefinerPipeline

        torch.set_num_threads(threads)  # as many as each Serve model replica gets
        vae = str(models_dir / "sdxl-vae")
        pipelines["base"] = SDXLBasePipeline(str(models_dir / "sdxl-base"), vae_id=vae)
        pipelines["refiner"] = SDXLRefinerPipeline(str(models_dir / "sdxl-refiner"), vae_id=vae)
        pipelines["safety"] = SafetyCheckerPipeline(str(models_dir / "safety-checker"))
        yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.post("/generate", response_model=GenerateResponse)
    def generate(body: GenerateRequest) -> GenerateResponse:
        from deployments.routes.sdxl import plan
        from genserve.images import png_data_uri
        from genserve.schemas.common import ImageOut

        # Mirrors deployments.routes.sdxl.generate, with calls where genserve has handles.
        started = time.perf_counter()
        seed = body.seed if body.seed is not None else random.randrange(2**32)
        p = plan(body, seed)
        batch = pipelines["base"].generate(p.base)
        if p.refine is not None:
            batch = pipelines["refiner"].refine(batch, p.refine)
        if body.safety_filter:
            batch = pipelines["safety"].check(batch)
        images = [ImageOut(url=png_data_uri(img), width=img.shape[1], height=img.shape[0])
                  for img in batch.images]
        return GenerateResponse(
            images=images, seed=seed, has_nsfw_concepts=batch.nsfw, mode=body.mode,
            timings={**{k: round(v, 4) for k, v in batch.timings.items()},
                     "total": round(time.perf_counter() - started, 4)},
            prompt=body.prompt)

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from bench.common import TINY_DIR

    parser = argparse.ArgumentParser(prog="python -m bench.plain_app", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--models-dir", type=Path, default=TINY_DIR)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    # Loopback only: a benchmark target, not a server.
    uvicorn.run(create_app(args.models_dir, args.threads), host="127.0.0.1", port=args.port,
                log_level="warning")


if __name__ == "__main__":
    main()

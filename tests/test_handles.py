"""The graph from Python: the app handle (same contract as HTTP) and deployment handles."""

from __future__ import annotations

import numpy as np
from ray import serve

from genserve.pipelines.outputs import ImageBatch
from genserve.pipelines.params import BaseParams
from genserve.schemas.sdxl import GenerateRequest
from genserve.tiny.sdxl import magenta_image


def test_app_handle_matches_http(client):
    handle = serve.get_app_handle("genserve")
    request = GenerateRequest(prompt="a cat with a hat", height=64, width=64,
                              num_inference_steps=5, is_ensemble=True, seed=3)
    via_handle = handle.generate.remote(request).result(timeout_s=120)
    via_http = client.post("/generate", json=request.model_dump(exclude_unset=True)).json()
    assert via_handle.mode == "ensemble"
    assert [i.url for i in via_handle.images] == [i["url"] for i in via_http["images"]]


def test_deployment_handle_returns_arrays(client):
    base = serve.get_deployment_handle("SDXLBase", app_name="genserve")
    batch = base.generate.remote(BaseParams("a cat", height=64, width=32, steps=2,
                                            num_images=2)).result(timeout_s=120)
    assert isinstance(batch, ImageBatch)
    assert [img.shape for img in batch.images] == [(64, 32, 3)] * 2
    assert all(img.dtype == np.uint8 for img in batch.images)


def test_handles_compose_without_blocking(client):
    # A DeploymentResponse passed straight into the next call: ensemble hand-off in Python.
    base = serve.get_deployment_handle("SDXLBase", app_name="genserve")
    refiner = serve.get_deployment_handle("SDXLRefiner", app_name="genserve")
    from genserve.pipelines.params import RefineParams

    latents = base.generate.remote(BaseParams("a cat", height=64, width=64, steps=5,
                                              denoising_end=0.8, output="latent"))
    images = refiner.refine.remote(latents, RefineParams("a cat", steps=5, denoising_start=0.8))
    result = images.result(timeout_s=120)
    assert result.images[0].shape == (64, 64, 3) and set(result.timings) == {"base", "refiner"}


def test_safety_checker_blacks_out_flagged_images(client):
    safety = serve.get_deployment_handle("SafetyChecker", app_name="genserve")
    calm = np.full((64, 64, 3), 90, dtype=np.uint8)
    result = safety.check.remote(ImageBatch([magenta_image(), calm])).result(timeout_s=60)
    assert result.nsfw == [True, False]
    assert result.images[0].max() == 0  # blacked out
    assert (result.images[1] == calm).all()  # untouched


def test_readme_python_example_runs(client):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "python_handle.py"
    spec = importlib.util.spec_from_file_location("python_handle", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main() == {"mode": "ensemble", "shape": (64, 64, 3)}

"""The pipelines without Ray: loading from save_pretrained directories, modes, determinism,
health checks. (Tier b: tiny models, 64 px, a few steps.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genserve.errors import PipelineBroken
from genserve.pipelines.params import BaseParams, RefineParams


@pytest.fixture(scope="module")
def base(tiny_models):
    from genserve.pipelines.sdxl_base import SDXLBasePipeline

    return SDXLBasePipeline(str(tiny_models["sdxl-base"]), vae_id=str(tiny_models["sdxl-vae"]))


@pytest.fixture(scope="module")
def refiner(tiny_models):
    from genserve.pipelines.sdxl_refiner import SDXLRefinerPipeline

    return SDXLRefinerPipeline(str(tiny_models["sdxl-refiner"]))


def test_loads_on_cpu_in_fp32(base, refiner):
    for pipe in (base, refiner):
        assert pipe.placement.device.type == "cpu" and pipe.placement.dtype == torch.float32
    assert base._components["text_encoder"] is not None
    assert refiner._components["text_encoder"] is None  # encoder 2 only, like the real one
    assert refiner._config["requires_aesthetics_score"] is True


def test_base_images_and_determinism(base):
    p = BaseParams("a cat", height=64, width=96, steps=3, num_images=2, seed=5)
    a, b = base.generate(p), base.generate(p)
    assert [i.shape for i in a.images] == [(64, 96, 3)] * 2
    assert all((x == y).all() for x, y in zip(a.images, b.images))
    assert not (a.images[0] == a.images[1]).all()


def test_latent_handoff_shapes(base, refiner):
    lat = base.generate(BaseParams("a cat", height=64, width=64, steps=5, denoising_end=0.8,
                                   output="latent"))
    assert lat.latents.shape == (1, 4, 8, 8)  # VAE scale factor 8, as SDXL
    out = refiner.refine(lat, RefineParams("a cat", steps=5, denoising_start=0.8))
    assert out.images[0].shape == (64, 64, 3) and set(out.timings) == {"base", "refiner"}


def test_refiner_changes_the_image(base, refiner):
    p = BaseParams("a cat", height=64, width=64, steps=4)
    plain = base.generate(p).images[0]
    lat = base.generate(BaseParams(**{**p.__dict__, "output": "latent"}))
    refined = refiner.refine(lat, RefineParams("a cat", steps=4, strength=0.5)).images[0]
    assert refined.shape == plain.shape and not (refined == plain).all()


def test_progress_callback_counts_steps(base):
    seen = []
    base.generate(BaseParams("a cat", height=64, width=64, steps=3),
                  on_step=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_health_check_catches_corrupt_weights(tiny_models):
    from genserve.pipelines.sdxl_base import SDXLBasePipeline

    pipe = SDXLBasePipeline(str(tiny_models["sdxl-base"]))
    pipe.check_health()
    with torch.no_grad():
        next(pipe._components["vae"].decoder.parameters()).fill_(float("nan"))
    with pytest.raises(PipelineBroken, match="non-finite"):
        pipe.check_health()


def test_fatal_device_error_marks_pipeline_broken(base):
    from genserve.pipelines.loading import HealthState

    state = HealthState()
    state.record(RuntimeError("out of range"))
    state.raise_if_broken()  # ordinary errors do not poison the replica
    state.record(RuntimeError("CUDA error: an illegal memory access was encountered"))
    with pytest.raises(PipelineBroken):
        state.raise_if_broken()


def test_tiny_models_are_reused_from_cache(tiny_models):
    import time

    from genserve import tiny

    started = time.perf_counter()
    again = tiny.build(next(iter(tiny_models.values())).parent)
    assert again == tiny_models and time.perf_counter() - started < 1.0


def test_safety_checker_flags_only_magenta(tiny_models, base):
    from genserve.pipelines.outputs import ImageBatch
    from genserve.pipelines.safety import SafetyCheckerPipeline
    from genserve.tiny.sdxl import magenta_image

    checker = SafetyCheckerPipeline(str(tiny_models["safety-checker"]))
    generated = base.generate(BaseParams("a cat", height=64, width=64, steps=3,
                                         num_images=4)).images
    out = checker.check(ImageBatch([magenta_image(), *generated]))
    assert out.nsfw == [True, False, False, False, False]
    assert out.images[0].max() == 0 and all((a == b).all() for a, b in zip(out.images[1:], generated))
    checker.check_health()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_on_cuda(tiny_models):
    from genserve.pipelines.sdxl_base import SDXLBasePipeline

    pipe = SDXLBasePipeline(str(tiny_models["sdxl-base"]), vae_id=str(tiny_models["sdxl-vae"]))
    assert pipe.placement.dtype == torch.float16
    out = pipe.generate(BaseParams("a cat", height=64, width=64, steps=2))
    assert np.isfinite(out.images[0]).all()


def test_tiny_builds_are_byte_identical_across_processes(tmp_path):
    """Same factory version → same files, in any process: seeds and outputs stay comparable
    between machines and CI runs."""
    import hashlib
    import subprocess
    import sys

    def build(out):
        code = ("import sys; from genserve import tiny; "
                "tiny.build(sys.argv[1], roles=['sdxl-base', 'llm'])")
        subprocess.run([sys.executable, "-c", code, str(out)], check=True, capture_output=True)
        return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(out.rglob("*")) if p.is_file() and p.name != "genserve_tiny.json"}

    first, second = build(tmp_path / "a"), build(tmp_path / "b")
    assert first == second and len(first) > 10

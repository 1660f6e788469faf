"""serve_config.yaml and cluster.yaml against Ray's own schemas; the builder; cheap imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from genserve import launch

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION_IDS = {
    "base_model": "stabilityai/stable-diffusion-xl-base-1.0",
    "refiner_model": "stabilityai/stable-diffusion-xl-refiner-1.0",
    "vae_model": "madebyollin/sdxl-vae-fp16-fix",
    "safety_model": "CompVis/stable-diffusion-safety-checker",
}


@pytest.fixture(scope="module")
def config() -> dict:
    return launch.load_config(ROOT / "serve_config.yaml")


def _deployments(config) -> dict:
    return {d["name"]: d for d in config["applications"][0]["deployments"]}


def test_serve_config_validates_with_rays_schema(config):
    schema = launch.validate(config)
    assert schema.applications[0].import_path == "deployments.app:build"


def test_invalid_serve_config_is_rejected(config):
    broken = launch.overlay(config, deployments={"SDXLBase": {"max_ongoing_requests": "many"}})
    with pytest.raises(Exception):
        launch.validate(broken)


def test_production_models_and_gpu_packing(config):
    app = config["applications"][0]
    assert app["args"]["sdxl"] | PRODUCTION_IDS == app["args"]["sdxl"]
    assert app["args"]["tiny_models_dir"] is None
    deps = _deployments(config)
    gpus = {n: d.get("ray_actor_options", {}).get("num_gpus", 0) for n, d in deps.items()}
    assert 0 < gpus["SDXLBase"] < 1 and 0 < gpus["SDXLRefiner"] < 1
    assert sum(gpus.values()) <= 1.0  # the whole graph fits one GPU
    for name in ("SDXLBase", "SDXLRefiner", "SafetyChecker", "Ingress"):
        auto = deps[name]["autoscaling_config"]
        assert 1 <= auto["min_replicas"] <= auto["max_replicas"]
        assert deps[name]["max_queued_requests"] > 0  # bounded queues, never -1
    assert config["http_options"]["request_timeout_s"] > 0


def test_tiny_overlay_changes_only_what_it_says(config):
    tiny = launch.overlay(config, tiny_models_dir="/models", host="127.0.0.1", port=8123)
    assert tiny["applications"][0]["args"]["tiny_models_dir"] == "/models"
    assert tiny["http_options"] | {"host": "0.0.0.0", "port": 8000} == config["http_options"]
    assert tiny["applications"][0]["deployments"] == config["applications"][0]["deployments"]
    assert config["applications"][0]["args"]["tiny_models_dir"] is None  # input untouched


def test_builder_binds_the_graph(config):
    from deployments.app import AppArgs, build

    args = AppArgs.model_validate(config["applications"][0]["args"])
    app = build(args)
    assert type(app).__name__ == "Application"
    tiny = build(args.model_copy(update={"tiny_models_dir": "/m"}))
    assert type(tiny).__name__ == "Application"
    with pytest.raises(Exception):
        AppArgs.model_validate({"sdxl": {"base_model": "x", "typo_field": 1}})


def test_importing_the_app_is_cheap():
    # Serve imports the builder on the controller; it must not pull in torch/diffusers.
    code = ("import sys, deployments.app; "
            "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "[]"


def test_cluster_yaml_validates_with_rays_schema():
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cluster, schema)
    validate_config(prepare_config(cluster))
    assert cluster["head_node_type"] in cluster["available_node_types"]
    assert {"gpu_1x", "gpu_4x"} <= set(cluster["available_node_types"])
    starts = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in starts and "RAY_AUTH_MODE=token" in starts

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
    args = app["args"]
    assert args["sdxl"] | PRODUCTION_IDS == args["sdxl"]
    assert args["llm"]["model"] == "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
    assert args["tts"]["model"] == "suno/bark-small"
    assert args["video"]["model"] == "stabilityai/stable-video-diffusion-img2vid"
    assert args["mesh3d"]["model"] == "openai/shap-e"
    assert args["tiny_models_dir"] is None
    deps = _deployments(config)
    gpus = {n: d.get("ray_actor_options", {}).get("num_gpus", 0) for n, d in deps.items()}
    assert 0 < gpus["SDXLBase"] < 1 and 0 < gpus["SDXLRefiner"] < 1
    # Packing plan: SDXL's three stages share one GPU, LLM + TTS + 3D another, video alone.
    assert gpus["SDXLBase"] + gpus["SDXLRefiner"] + gpus["SafetyChecker"] == 1.0
    assert gpus["LLMChat"] + gpus["TextToSpeech"] + gpus["TextTo3D"] == 1.0
    assert gpus["ImageToVideo"] == 1 and gpus["Ingress"] == 0
    for name, dep in deps.items():
        auto = dep.get("autoscaling_config") or {"min_replicas": dep["num_replicas"],
                                                 "max_replicas": dep["num_replicas"]}
        assert 0 <= auto["min_replicas"] <= auto["max_replicas"], name
        assert dep["max_queued_requests"] > 0, name  # bounded queues, never -1
        assert dep["max_ongoing_requests"] >= 1, name
    assert deps["ImageToVideo"]["autoscaling_config"]["min_replicas"] == 0  # scale to zero
    for name in ("LLMChat", "TextToSpeech"):  # batching knobs live in the YAML
        assert set(deps[name]["user_config"]) == {"max_batch_size", "batch_wait_timeout_s"}
    assert config["http_options"]["request_timeout_s"] > 0
    # Queue workers: more than one, so a dying worker costs a lease period, not the queue.
    assert deps["JobWorker"]["num_replicas"] >= 2 and gpus["JobWorker"] == 0
    assert {"ssl_keyfile", "ssl_certfile"} <= set(config["http_options"])


def test_local_node_is_sized_from_the_config(config):
    # 1 + 2 × 0.5 + 1 + 1 + 0.5 + 1 + 1 + 1 + 2 CPUs; GPUs: SDXL trio 1 + LLM/TTS/3D 1 +
    # video 1 (a scale-to-zero deployment counts once: it must be able to wake up).
    assert launch.required_resources(config) == {"CPU": 10.0, "GPU": 3.0}
    sdxl_only = launch.overlay(config, args={"llm": None})
    app = sdxl_only["applications"][0]
    app["deployments"] = [d for d in app["deployments"]
                          if d["name"] in ("Ingress", "SDXLBase", "SDXLRefiner", "SafetyChecker")]
    assert launch.required_resources(sdxl_only) == {"CPU": 4.0, "GPU": 1.0}


def test_tiny_overlay_changes_only_what_it_says(config):
    tiny = launch.overlay(config, tiny_models_dir="/models", host="127.0.0.1", port=8123)
    assert tiny["applications"][0]["args"]["tiny_models_dir"] == "/models"
    assert tiny["http_options"] | {"host": "0.0.0.0", "port": 8000} == config["http_options"]
    assert tiny["applications"][0]["deployments"] == config["applications"][0]["deployments"]
    assert config["applications"][0]["args"]["tiny_models_dir"] is None  # input untouched


def test_builder_binds_the_graph(config):
    from deployments.app import AppArgs, build, tiny_models

    args = AppArgs.model_validate(config["applications"][0]["args"])
    app = build(args)
    assert type(app).__name__ == "Application"
    tiny = build(args.model_copy(update={"tiny_models_dir": "/m"}))
    assert type(tiny).__name__ == "Application"
    mapped = tiny_models(args.model_copy(update={"tiny_models_dir": "/m"}))
    assert mapped.llm.model == "/m/llm" and mapped.llm.served_name == args.llm.served_name
    assert mapped.sdxl.public_lora_dir == "/m/sdxl-public-loras"  # fits the tiny UNet
    assert mapped.sdxl.lora_dir == args.sdxl.lora_dir  # trained LoRAs stay where jobs write
    assert (mapped.tts.model, mapped.video.model, mapped.mesh3d.model) == (
        "/m/bark", "/m/svd", "/m/shap-e")
    vits = AppArgs.model_validate({**args.model_dump(), "tiny_models_dir": "/m",
                                   "tts": {"model": "facebook/mms-tts-eng"}})
    assert tiny_models(vits).tts.model == "/m/vits"
    partial = AppArgs.model_validate({"llm": None, "tts": None, "video": None, "mesh3d": None})
    assert type(build(partial)).__name__ == "Application"
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


def test_cluster_yaml_can_hold_the_serve_config(config):
    from genserve.kuberay import demand

    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    types = cluster["available_node_types"]
    need = demand(config)
    head = types[cluster["head_node_type"]]["resources"]
    assert head["GPU"] == 0 and head["CPU"] >= need.head_cpus  # ingress + queue workers
    gpu_types = {n: t for n, t in types.items() if t["resources"].get("GPU")}
    assert {n: t["resources"]["GPU"] for n, t in gpu_types.items()} == {"gpu_1x": 1, "gpu_4x": 4}
    for name, t in gpu_types.items():
        # A node full of the most CPU-hungry GPU share still has a CPU per replica.
        assert t["resources"]["CPU"] >= need.cpus_per_gpu * t["resources"]["GPU"], name
    # Autoscaler limits: every deployment at max_replicas fits; the always-on replicas fit
    # the minimum nodes; the global cap is the sum of the per-type caps.
    assert sum(t["max_workers"] * t["resources"]["GPU"] for t in gpu_types.values()) >= (
        need.max_gpus)
    assert sum(t["min_workers"] * t["resources"]["GPU"] for t in gpu_types.values()) >= (
        need.min_gpus)
    assert cluster["max_workers"] == sum(t["max_workers"] for t in gpu_types.values())
    assert 0 < cluster["idle_timeout_minutes"] and cluster["upscaling_speed"] > 0


def test_cluster_yaml_installs_the_project_and_shares_the_token():
    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    mounts = cluster["file_mounts"]
    checkout = next(remote for remote, local in mounts.items() if local == ".")
    assert any(f"cd ~/{Path(checkout).name}" in c and "pip install -e ." in c
               for c in cluster["setup_commands"])
    # Every node gets the operator's token file and starts Ray with token auth on.
    assert mounts["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"
    starts = cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert not any("RAY_AUTH_MODE=disabled" in c or "dashboard-host=0.0.0.0" in c
                   for c in starts)

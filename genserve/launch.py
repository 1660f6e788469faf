"""Start the serving graph from `serve_config.yaml`, the way `serve run <config>` does.

`deploy()` validates the config with Ray's own `ServeDeploySchema`, starts Serve with the
file's `http_options` and applies the config through the controller: the builder then runs in
a Ray task exactly as it does for `serve deploy` on a production cluster. The demo, the tests
and the benchmarks all come through here with a small, explicit overlay (tiny models, host,
port); nothing else about the file changes.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "serve_config.yaml"
APP_NAME = "genserve"


def load_config(path: str | Path = DEFAULT_CONFIG) -> dict[str, Any]:
    with open(path) as f:
        return yaml.safe_load(f)


def overlay(config: dict[str, Any], *, tiny_models_dir: str | None = None,
            host: str | None = None, port: int | None = None,
            args: dict[str, Any] | None = None,
            deployments: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """A copy of ``config`` with the given changes: app args, HTTP bind, per-deployment options
    (merged key by key into the deployment's entry)."""
    config = copy.deepcopy(config)
    if host is not None:
        config.setdefault("http_options", {})["host"] = host
    if port is not None:
        config.setdefault("http_options", {})["port"] = port
    app = next(a for a in config["applications"] if a["name"] == APP_NAME)
    if tiny_models_dir is not None:
        app.setdefault("args", {})["tiny_models_dir"] = str(tiny_models_dir)
    for key, value in (args or {}).items():
        app.setdefault("args", {})[key] = value
    by_name = {d["name"]: d for d in app.setdefault("deployments", [])}
    for name, options in (deployments or {}).items():
        target = by_name.get(name)
        if target is None:
            target = {"name": name}
            app["deployments"].append(target)
        _merge(target, options)
    return config


def _merge(target: dict, changes: dict) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def required_resources(config: dict[str, Any]) -> dict[str, float]:
    """Logical CPUs and GPUs a single local node needs to run every deployment's minimum
    replicas, counting a scale-to-zero deployment as one (it must be able to wake up).
    GPUs are counted per group that must share a device in whole units (ceil of the sum),
    which is what Ray's fractional packing needs when the fractions add up to whole GPUs."""
    from ray.serve.config import AutoscalingConfig

    cpus = gpus = 0.0
    for app in config["applications"]:
        for dep in app.get("deployments", []):
            options = dep.get("ray_actor_options", {})
            auto = dep.get("autoscaling_config")
            replicas = max(1, AutoscalingConfig(**auto).min_replicas if auto
                           else dep.get("num_replicas", 1))
            cpus += options.get("num_cpus", 1) * replicas
            gpus += options.get("num_gpus", 0) * replicas
    return {"CPU": float(math.ceil(cpus)), "GPU": float(math.ceil(gpus - 1e-9))}


def validate(config: dict[str, Any]):
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema.model_validate(config)


def deploy(config: dict[str, Any], timeout_s: float = 600) -> None:
    """Deploy ``config`` on the connected Ray cluster and wait until every app is RUNNING."""
    from ray.serve._private import api as serve_api
    from ray.serve.config import gRPCOptions

    schema = validate(config)
    client = serve_api.serve_start(
        http_options=schema.http_options.model_dump(),
        proxy_location=schema.proxy_location,
        grpc_options=gRPCOptions(**schema.grpc_options.model_dump()),
    )
    client.deploy_apps(schema, _blocking=False)
    wait_until_running([a.name for a in schema.applications], timeout_s)


def wait_until_running(app_names: list[str], timeout_s: float) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        apps = serve.status().applications
        states = {n: apps[n].status if n in apps else "NOT_STARTED" for n in app_names}
        if all(s == "RUNNING" for s in states.values()):
            return
        failed = {n: apps[n].message for n, s in states.items() if s == "DEPLOY_FAILED"}
        if failed:
            raise RuntimeError(f"deployment failed: {failed}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"apps not RUNNING after {timeout_s}s: {states}")
        time.sleep(0.5)

"""Driver for tests/test_multinode.py: deploys a small stand-in of genserve's graph on a
two-node loopback cluster, drives HTTP load through the head's proxy and records what Serve
did. It runs in its own process (the pytest process may already hold the session's Ray
cluster) and connects through ``RAY_ADDRESS``; token auth comes from ``RAY_AUTH_MODE`` /
``RAY_AUTH_TOKEN`` in its environment, as on a production node.

    RAY_ADDRESS=127.0.0.1:<gcs> python tests/scripts/multinode_app.py --port 8123 \\
        --dashboard 127.0.0.1:<port> --out result.json

Every wait is bounded; the findings go to ``--out`` as JSON and the test asserts on them.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import threading
import time
from typing import Any

import httpx
import ray
from ray import serve
from starlette.requests import Request

APP = "multinode"
# Stand-in for an SDXL-sized model: half a GPU, so two replicas share one device as base +
# refiner do in serve_config.yaml. Three replicas at most keep the 2-core box responsive.
GPU_SHARE = 0.5
MAX_REPLICAS = 3
# Each request holds its replica this long: long enough that 6 concurrent clients keep
# several requests ongoing per replica (the autoscaling signal), short enough for a quick test.
SERVICE_S = 0.3
CLIENTS = 6


def _where() -> dict[str, Any]:
    ctx = ray.get_runtime_context()
    return {"node_id": ctx.get_node_id(), "actor_id": ctx.get_actor_id(),
            "host": socket.gethostname(), "pid": os.getpid(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}


@serve.deployment(
    ray_actor_options={"num_gpus": GPU_SHARE, "num_cpus": 0},
    max_ongoing_requests=2,
    autoscaling_config={
        "min_replicas": 1,
        "max_replicas": MAX_REPLICAS,
        "target_ongoing_requests": 1,
        # Production waits 10 s up / 300 s down; seconds here so the test sees both ways.
        "upscale_delay_s": 1,
        "downscale_delay_s": 3,
        # Replicas and handles report every 0.5 s instead of 10 s (the default), over a
        # 2 s window: the decision follows the load within a couple of seconds.
        "metrics_interval_s": 0.5,
        "look_back_period_s": 2,
    },
    graceful_shutdown_wait_loop_s=0.5,
    graceful_shutdown_timeout_s=2,
)
class GpuModel:
    """Stands in for a diffusion deployment: holds a GPU share, takes SERVICE_S per call."""

    async def __call__(self) -> dict[str, Any]:
        import asyncio

        await asyncio.sleep(SERVICE_S)
        return _where()


@serve.deployment(
    # `head_node` exists only on the head (see test_multinode.py): the ingress sits next to
    # the HTTP proxy, as the CPU-only Ingress does on cluster.yaml's head.
    ray_actor_options={"num_cpus": 0, "resources": {"head_node": 0.01}},
    max_ongoing_requests=64,
)
class Ingress:
    def __init__(self, model) -> None:
        self.model = model

    async def __call__(self, request: Request) -> dict[str, Any]:
        replica = await self.model.remote()
        return {"ingress": _where(), "replica": replica}


def running(deployment: str) -> int:
    app = serve.status().applications.get(APP)
    dep = app.deployments.get(deployment) if app else None
    return dep.replica_states.get("RUNNING", 0) if dep else 0


def replica_actors(dashboard: str) -> list[dict[str, Any]]:
    """Serve's replica actors as Ray's state API sees them (through the token-protected
    dashboard): the placement evidence that does not rely on the replicas' own word."""
    from ray.util.state import list_actors

    return [{"class_name": a.class_name, "node_id": a.node_id, "actor_id": a.actor_id}
            for a in list_actors(address=f"http://{dashboard}",
                                 filters=[("state", "=", "ALIVE")], detail=True)
            if a.class_name.startswith(f"ServeReplica:{APP}:")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="Serve HTTP port (loopback)")
    parser.add_argument("--dashboard", required=True, help="host:port of the head's dashboard")
    parser.add_argument("--out", required=True, help="where the JSON findings go")
    parser.add_argument("--scale-timeout", type=float, default=45.0)
    args = parser.parse_args()
    result: dict[str, Any] = {}
    t0 = time.monotonic()

    ray.init()  # RAY_ADDRESS from the environment: the test's cluster, never the session's
    result["gcs_address"] = ray.get_runtime_context().gcs_address
    result["nodes"] = [{"node_id": n["NodeID"], "alive": n["Alive"],
                        "resources": n["Resources"]} for n in ray.nodes()]
    # HeadOnly: both nodes share one IP here, so a proxy per node would fight over the port;
    # on a real cluster (serve_config.yaml) every node runs one.
    serve.start(http_options={"host": "127.0.0.1", "port": args.port, "location": "HeadOnly"})
    serve.run(Ingress.bind(GpuModel.bind()), name=APP, route_prefix="/")
    result["deploy_s"] = round(time.monotonic() - t0, 2)

    url = f"http://127.0.0.1:{args.port}/"
    with httpx.Client(timeout=30) as client:
        result["first"] = client.get(url).json()

    # Load: CLIENTS threads send back-to-back requests until told to stop.
    stop = threading.Event()
    seen: list[dict[str, Any]] = []
    errors: list[str] = []

    def load() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                try:
                    r = client.get(url)
                    r.raise_for_status()
                    seen.append(r.json())
                except Exception as e:  # recorded, the test fails on any
                    errors.append(repr(e))

    threads = [threading.Thread(target=load, daemon=True) for _ in range(CLIENTS)]
    t_load = time.monotonic()
    for t in threads:
        t.start()
    peak = 1
    up_s = None
    deadline = t_load + args.scale_timeout
    while time.monotonic() < deadline:
        peak = max(peak, running("GpuModel"))
        if peak >= MAX_REPLICAS:
            up_s = time.monotonic() - t_load
            break
        time.sleep(0.25)
    # A few more seconds of load so every new replica takes requests (the router learns of
    # them asynchronously), then the placement evidence while all of them are alive.
    time.sleep(3)
    result["actors_at_peak"] = replica_actors(args.dashboard)
    stop.set()
    for t in threads:
        t.join(timeout=35)
    result["scale_up_s"] = None if up_s is None else round(up_s, 2)
    result["peak_replicas"] = peak
    result["requests_under_load"] = len(seen)
    result["load_errors"] = errors[:5]
    result["replicas_seen"] = sorted({r["replica"]["actor_id"] for r in seen})
    result["replica_nodes_seen"] = sorted({r["replica"]["node_id"] for r in seen})
    result["ingress_nodes_seen"] = sorted({r["ingress"]["node_id"] for r in seen})
    result["gpu_ids_seen"] = sorted({g for r in seen for g in r["replica"]["gpu_ids"]})

    # Load is off: Serve must come back down to min_replicas after downscale_delay_s.
    t_idle = time.monotonic()
    down_s = None
    deadline = t_idle + args.scale_timeout
    while time.monotonic() < deadline:
        if running("GpuModel") == 1 and serve.status().applications[APP].deployments[
                "GpuModel"].status == "HEALTHY":
            down_s = time.monotonic() - t_idle
            break
        time.sleep(0.25)
    result["scale_down_s"] = None if down_s is None else round(down_s, 2)
    result["replicas_after"] = running("GpuModel")
    result["total_s"] = round(time.monotonic() - t0, 2)
    serve.delete(APP)
    serve.shutdown()
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

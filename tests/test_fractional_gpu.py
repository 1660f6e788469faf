"""Fractional GPUs: base 0.45 + refiner 0.45 + safety 0.1 pack one (logical) GPU exactly, and
one more 0.45-GPU replica waits instead of oversubscribing it."""

from __future__ import annotations

import time

from ray import serve
from ray.util.state import list_actors

from tests.util import tiny_request


def _replica_actors(app: str, deployment: str):
    return [a for a in list_actors(filters=[("state", "=", "ALIVE")], detail=True)
            if a.class_name == f"ServeReplica:{app}:{deployment}"]


def test_sdxl_deployments_share_one_gpu(client, ray_cluster):
    ray = ray_cluster
    status = serve.status().applications["genserve"].deployments
    for name in ("SDXLBase", "SDXLRefiner", "SafetyChecker"):
        assert status[name].status == "HEALTHY", status[name]
    node_ids = {a.node_id for name in ("SDXLBase", "SDXLRefiner", "SafetyChecker")
                for a in _replica_actors("genserve", name)}
    assert node_ids == {ray.get_runtime_context().get_node_id()}
    gpus = {name: a.required_resources.get("GPU")
            for name in ("SDXLBase", "SDXLRefiner", "SafetyChecker")
            for a in _replica_actors("genserve", name)}
    assert gpus == {"SDXLBase": 0.45, "SDXLRefiner": 0.45, "SafetyChecker": 0.1}
    assert ray.available_resources().get("GPU", 0.0) < 1e-6  # fully used, not over


@serve.deployment(ray_actor_options={"num_gpus": 0.45, "num_cpus": 0})
class GpuHungry:
    def __call__(self) -> str:
        return "placed"


def test_extra_fractional_replica_stays_pending(client, ray_cluster):
    serve.run_many([serve.RunTarget(GpuHungry.bind(), name="overflow", route_prefix="/overflow")],
                   wait_for_ingress_deployment_creation=False,
                   wait_for_applications_running=False)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            app = serve.status().applications["overflow"]
            assert app.status == "DEPLOYING", app  # never RUNNING: no GPU share left
            time.sleep(1)
        assert ray_cluster.available_resources().get("GPU", 0.0) < 1e-6
        # The packed graph keeps serving while the extra replica waits.
        assert client.post("/generate", json=tiny_request(num_inference_steps=2)).status_code == 200
    finally:
        serve.delete("overflow", _blocking=True)
    assert serve.status().applications["genserve"].status == "RUNNING"

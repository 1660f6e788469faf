"""Fractional GPUs: base 0.45 + refiner 0.45 + safety 0.1 pack one (logical) GPU, and replicas
asking for more GPU than is free wait instead of oversubscribing."""

from __future__ import annotations

import time

from ray import serve
from ray.util.state import list_actors

from tests.util import tiny_request

SHARE = 0.45


def _replica_actors(app: str, deployment: str):
    return [a for a in list_actors(filters=[("state", "=", "ALIVE")], detail=True)
            if a.class_name == f"ServeReplica:{app}:{deployment}"]


def test_sdxl_deployments_share_one_gpu(client, ray_cluster):
    ray = ray_cluster
    status = serve.status().applications["genserve"].deployments
    trio = ("SDXLBase", "SDXLRefiner", "SafetyChecker")
    for name in trio:
        assert status[name].status == "HEALTHY", status[name]
    gpus = {name: a.required_resources.get("GPU") for name in trio
            for a in _replica_actors("genserve", name)}
    assert gpus == {"SDXLBase": 0.45, "SDXLRefiner": 0.45, "SafetyChecker": 0.1}
    assert sum(gpus.values()) == 1.0  # exactly one GPU's worth
    node_ids = {a.node_id for name in trio for a in _replica_actors("genserve", name)}
    assert node_ids == {ray.get_runtime_context().get_node_id()}


@serve.deployment(ray_actor_options={"num_gpus": SHARE, "num_cpus": 0})
class GpuHungry:
    def __call__(self) -> str:
        return "placed"


def _running(app: str) -> int:
    status = serve.status().applications.get(app)
    deployment = status.deployments.get("GpuHungry") if status else None
    return deployment.replica_states.get("RUNNING", 0) if deployment else 0


def test_replicas_beyond_free_gpu_stay_pending(client, ray_cluster):
    ray = ray_cluster
    free = ray.available_resources().get("GPU", 0.0)
    fits = int(free / SHARE + 1e-9)
    app = GpuHungry.options(num_replicas=fits + 1).bind()
    serve.run_many([serve.RunTarget(app, name="overflow", route_prefix="/overflow")],
                   wait_for_ingress_deployment_creation=False,
                   wait_for_applications_running=False)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
                _running("overflow") < fits
                or "GpuHungry" not in serve.status().applications["overflow"].deployments):
            time.sleep(0.5)
        assert _running("overflow") == fits
        for _ in range(5):  # and it stays that way: the extra replica waits for a GPU share
            time.sleep(1)
            assert _running("overflow") == fits
            assert serve.status().applications["overflow"].status == "DEPLOYING"
        left = ray.available_resources().get("GPU", 0.0)
        assert -1e-6 <= left < SHARE  # nothing oversubscribed, not enough for one more
        # The rest of the graph keeps serving meanwhile.
        assert client.post("/generate", json=tiny_request(num_inference_steps=2)).status_code == 200
    finally:
        serve.delete("overflow", _blocking=True)
    assert serve.status().applications["genserve"].status == "RUNNING"

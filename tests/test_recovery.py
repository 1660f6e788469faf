"""Faults survived under traffic (RELIABILITY.md F1, F4, F5): a pipeline replica, the Serve
controller and the HTTP proxy are killed while a client keeps sending requests. The client
retries the way ours does (connection errors, 502/503/504, with backoff); the test checks how
many first attempts failed, that every request finally succeeded, and how long recovery took.

Runs after the queue tests (file order) because it kills the session app's actors."""

from __future__ import annotations

import json
import time

import pytest

from tests.traffic import Traffic

FIGURES: dict = {}


def _actor(fragment: str):
    import ray

    for info in ray.util.list_named_actors(all_namespaces=True):
        if fragment in info["name"]:
            return ray.get_actor(info["name"], namespace=info["namespace"])
    raise LookupError(fragment)


@pytest.mark.parametrize("fault,target", [
    ("F1 pipeline replica killed", "#SDXLBase#"),
    ("F4 controller killed", "SERVE_CONTROLLER_ACTOR"),
    ("F5 HTTP proxy killed", "SERVE_PROXY_ACTOR"),
])
def test_traffic_survives(app_url, fault, target):
    import ray

    with Traffic(app_url) as traffic:
        traffic.wait_served(2)  # warmed up
        time.sleep(1)
        served_before = traffic.ok
        killed_at = time.monotonic()
        ray.kill(_actor(target), no_restart=False)
        time.sleep(0.2)
        recovery_s = traffic.wait_served(traffic.ok)
        time.sleep(2)  # and keeps serving
    failed_after_kill = [f for f in traffic.failures if f[0] >= killed_at]
    FIGURES[fault] = {
        "requests": traffic.sent, "served": traffic.ok, "gave_up": traffic.gave_up,
        "first_attempts_failed": traffic.first_try_failed,
        "served_before_kill": served_before,
        "first_success_after_kill_s": round(recovery_s, 2),
        "failure_reasons": sorted({f[1] for f in failed_after_kill})}
    print(f"\n{fault}: {json.dumps(FIGURES[fault])}")
    assert traffic.gave_up == 0, traffic.failures[-5:]
    assert traffic.ok == traffic.sent or traffic.ok == traffic.sent - 1  # the one in flight
    if target == "SERVE_CONTROLLER_ACTOR":
        # The data path does not go through the controller: nothing even needed a retry.
        assert traffic.first_try_failed == 0, failed_after_kill

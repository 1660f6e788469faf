"""Faults survived under traffic (RELIABILITY.md F1, F4, F5): a pipeline replica, the Serve
controller and the HTTP proxy are killed while a client keeps sending requests. The client
retries the way ours does (connection errors, 502/503/504, with backoff); the test checks how
many first attempts failed, that every request finally succeeded, and how long recovery took.

Runs after the queue tests (file order) because it kills the session app's actors."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.conftest import API_KEY
from tests.util import tiny_request

FIGURES: dict = {}


class Traffic:
    """A background client sending /generate back to back, retrying each request."""

    def __init__(self, app_url: str):
        self.url, self.stop = app_url, threading.Event()
        self.sent = self.ok = self.first_try_failed = self.gave_up = 0
        self.failures: list[tuple[float, str]] = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        with httpx.Client(base_url=self.url, timeout=30,
                          headers={"Authorization": f"Key {API_KEY}"}) as client:
            while not self.stop.is_set():
                self.sent += 1
                self.one(client)

    def one(self, client, attempts: int = 90):
        for attempt in range(attempts):
            try:
                r = client.post("/generate", json=tiny_request(num_inference_steps=2))
                if r.status_code == 200:
                    self.ok += 1
                    return
                if r.status_code not in (502, 503, 504):
                    self.failures.append((time.monotonic(), f"{r.status_code} {r.text[:200]}"))
                    self.gave_up += 1
                    return
                reason = str(r.status_code)
            except httpx.HTTPError as exc:
                reason = type(exc).__name__
            if attempt == 0:
                self.first_try_failed += 1
            self.failures.append((time.monotonic(), reason))
            time.sleep(min(0.1 * 2 ** attempt, 1.0))
        self.gave_up += 1

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(60)


def _actor(fragment: str):
    import ray

    for info in ray.util.list_named_actors(all_namespaces=True):
        if fragment in info["name"]:
            return ray.get_actor(info["name"], namespace=info["namespace"])
    raise LookupError(fragment)


def _wait_served(traffic: Traffic, after: int, timeout_s: float = 120) -> float:
    started = time.monotonic()
    while traffic.ok <= after:
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"no request served {timeout_s}s after the fault")
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.parametrize("fault,target", [
    ("F1 pipeline replica killed", "#SDXLBase#"),
    ("F4 controller killed", "SERVE_CONTROLLER_ACTOR"),
    ("F5 HTTP proxy killed", "SERVE_PROXY_ACTOR"),
])
def test_traffic_survives(app_url, fault, target):
    import ray

    with Traffic(app_url) as traffic:
        _wait_served(traffic, 2)  # warmed up
        time.sleep(1)
        served_before = traffic.ok
        killed_at = time.monotonic()
        ray.kill(_actor(target), no_restart=False)
        time.sleep(0.2)
        recovery_s = _wait_served(traffic, traffic.ok)
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

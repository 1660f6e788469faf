"""Helpers for the queue tests: submit through the fal-style routes and wait for an end."""

from __future__ import annotations

import time

SDXL = "/queue/genserve/sdxl"


def sdxl_input(**overrides) -> dict:
    """A cheap SDXL job: 64×64, base only, a few steps."""
    return {"prompt": "a cat with a hat", "height": 64, "width": 64, "num_inference_steps": 3,
            **overrides}


def submit(client, body: dict, endpoint: str = SDXL, **kwargs) -> dict:
    r = client.post(endpoint, json=body, **kwargs)
    assert r.status_code == 200, r.text
    return r.json()


def wait(client, request_id: str, timeout_s: float = 120, logs: bool = False) -> dict:
    """Poll until COMPLETED; the final status."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = client.get(f"/queue/requests/{request_id}/status", params={"logs": int(logs)})
        assert r.status_code == 200, r.text
        status = r.json()
        if status["status"] == "COMPLETED":
            return status
        time.sleep(0.1)
    raise TimeoutError(f"{request_id} not COMPLETED after {timeout_s}s: {status}")


def wait_for(predicate, timeout_s: float = 60, every_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(every_s)
    raise TimeoutError("condition not met")

"""Fixed-cost stand-in models and the thin HTTP ingresses the Serve benchmarks put in front of
them. A stand-in's cost is known exactly, so what a benchmark measures on top of it is the
serving path: the HTTP proxy, the replica, each handle hop and the payload copies.

Two kinds of work: ``sleep`` (the replica waits, like a GPU kernel the CPU only waits on: the
serving path gets the cores to itself) and ``spin`` (a Python busy loop holding a core: the
serving path competes with the model for the CPU, as with a CPU model).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ray import serve

KINDS = ("sleep", "spin")


def work(ms: float, kind: str) -> None:
    """``ms`` of blocking work of the given kind, run in the caller's thread."""
    if kind == "sleep":
        time.sleep(ms / 1000)
        return
    if kind != "spin":
        raise ValueError(f"`kind` must be one of {KINDS} but is {kind!r}")
    deadline = time.perf_counter() + ms / 1000
    while time.perf_counter() < deadline:
        pass


@serve.deployment(max_ongoing_requests=16)
class FixedCost:
    """``run`` costs ``work_ms`` and returns ``payload_bytes`` bytes (a latent's worth, say),
    or the upstream payload it was given when ``payload_bytes`` is 0."""

    def __init__(self, work_ms: float, kind: str = "sleep", payload_bytes: int = 0):
        self.work_ms, self.kind = work_ms, kind
        self.payload = bytes(payload_bytes)

    async def run(self, upstream: bytes | None = None) -> bytes:
        # Off the event loop, as the real SDXL deployments run their pipelines.
        await asyncio.to_thread(work, self.work_ms, self.kind)
        return self.payload or upstream or b""


@serve.deployment(max_ongoing_requests=64)
class Relay:
    """HTTP ingress with no work of its own: each request is one ``run`` on the model handle
    (one hop), or on each handle in turn with the previous response passed straight in (the
    genserve ingress's base → refiner composition: nothing awaited until the end)."""

    def __init__(self, *models: Any):
        self.models = models

    async def __call__(self, request) -> Any:
        from starlette.responses import Response

        response = None
        for model in self.models:
            response = model.run.remote(response)
        out = await response
        return Response(str(len(out)).encode())


@serve.deployment(max_ongoing_requests=64)
class Fused:
    """HTTP ingress that does the stages' work itself: no handle hop at all."""

    def __init__(self, stage_ms: list[float], kind: str = "sleep", payload_bytes: int = 0):
        self.stage_ms, self.kind, self.payload_bytes = stage_ms, kind, payload_bytes

    async def __call__(self, request) -> Any:
        from starlette.responses import Response

        out = b""
        for ms in self.stage_ms:
            await asyncio.to_thread(work, ms, self.kind)
            out = bytes(self.payload_bytes)
        return Response(str(len(out)).encode())

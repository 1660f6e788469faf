"""Fault injection for the reliability cases, from the outside of the pipelines: a subclass of
the real `SDXLBase` deployment whose constructor, health check and generate consult files in a
directory the test controls. The pipeline code itself has no test mode; the ingress, routing,
error mapping and Serve's own machinery are the production ones.

Files in ``fault_dir`` (absent = no fault):
- ``ctor-fail``: N; the first N constructor attempts raise (attempts counted in ``ctor-attempts``)
- ``unhealthy-<replica id>``: that replica's `check_health` raises
- ``slow``: seconds a `generate` whose prompt contains "stuck" sleeps first (a stuck handler)
"""

from __future__ import annotations

import asyncio
import fcntl
from pathlib import Path
from typing import Any

from ray import serve

from deployments.ingress import Ingress
from deployments.sdxl import SafetyChecker, SDXLBase, SDXLRefiner


def _bump(path: Path) -> int:
    """Increment the counter in ``path`` under a lock (replicas start concurrently)."""
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        n = int(f.read() or 0) + 1
        f.seek(0)
        f.truncate()
        f.write(str(n))
        return n


class _FaultySDXLBase(SDXLBase.func_or_class):
    def __init__(self, *args: Any, fault_dir: str, version: str = "v1", **kwargs: Any):
        self.fault_dir, self.version = Path(fault_dir), version
        fail = self.fault_dir / "ctor-fail"
        if fail.exists() and _bump(self.fault_dir / "ctor-attempts") <= int(fail.read_text()):
            raise RuntimeError("injected constructor failure")
        super().__init__(*args, **kwargs)
        self.replica = serve.get_replica_context().replica_id.unique_id

    async def generate(self, params):
        slow = self.fault_dir / "slow"
        if "stuck" in params.prompt and slow.exists():
            await asyncio.sleep(float(slow.read_text()))
        return await super().generate(params)

    def check_health(self) -> None:
        if (self.fault_dir / f"unhealthy-{self.replica}").exists():
            raise RuntimeError("injected health-check failure")
        super().check_health()


FaultySDXLBase = serve.deployment(
    _FaultySDXLBase, name="SDXLBase", ray_actor_options={"num_gpus": 0.45},
    max_ongoing_requests=2, max_queued_requests=16,
    # Short timers, as RELIABILITY.md suggests for tests (production's are in the YAML).
    health_check_period_s=1, health_check_timeout_s=2, graceful_shutdown_timeout_s=5,
    graceful_shutdown_wait_loop_s=0.5)


def graph(models: dict[str, Path], fault_dir: Path, state: Path, *, replicas: int = 1,
          others: int = 1, autoscaling: dict | None = None,
          version: str = "v1") -> serve.Application:
    """The production ingress over the faulty base and the real refiner and safety checker
    (GPU fractions small: the base replicas are the ones scaled here). ``replicas``: the
    base's; ``others``: the ingress's, refiner's and safety checker's."""
    scale = {"autoscaling_config": autoscaling} if autoscaling else {"num_replicas": replicas}
    base = FaultySDXLBase.options(**scale).bind(
        str(models["sdxl-base"]), vae_id=str(models["sdxl-vae"]),
        lora_dir=str(state / "loras"), fault_dir=str(fault_dir), version=version)
    refiner = SDXLRefiner.options(num_replicas=others,
                                  ray_actor_options={"num_gpus": 0.1}).bind(
        str(models["sdxl-refiner"]), vae_id=str(models["sdxl-vae"]),
        lora_dir=str(state / "loras"))
    safety = SafetyChecker.options(num_replicas=others,
                                   ray_actor_options={"num_gpus": 0.1}).bind(
        str(models["safety-checker"]))
    return Ingress.options(num_replicas=others, health_check_period_s=1,
                           health_check_timeout_s=2).bind(
        base=base, refiner=refiner, safety=safety, database_url=f"sqlite:///{state / 'usage.db'}",
        files_location=str(state / "files"))

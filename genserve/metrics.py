"""genserve's Prometheus metrics, recorded with Ray's metrics API next to Ray Serve's own.

Every process of the cluster (ingress, pipeline replicas, queue workers) records through
`ray.util.metrics`; each node's metrics agent exports them at ``:<metrics_export_port>/metrics``
with a ``ray_`` prefix (``genserve_inference_seconds`` is scraped as
``ray_genserve_inference_seconds``). Tags are low-cardinality on purpose: pipeline, deployment,
endpoint (a catalog name), state, status class. Never a user id, a LoRA id or a raw URL path:
each distinct tag value is a new time series kept forever by Prometheus.

Outside a Ray worker (unit tests, benchmarks calling a pipeline directly) every function here
is a no-op, so library code can call them unconditionally.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

log = logging.getLogger(__name__)

# Seconds: a tiny CPU step (ms) up to a long SDXL/video run on a busy GPU (minutes).
LATENCY_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600]
# Queue waits run longer: jobs may sit behind a training run for many minutes.
QUEUE_BUCKETS = [0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600]

INFERENCE_SECONDS = "genserve_inference_seconds"
GPU_SECONDS = "genserve_gpu_seconds_total"
LORA_CACHE = "genserve_lora_cache_total"
QUEUE_WAIT = "genserve_queue_wait_seconds"
JOBS_FINISHED = "genserve_jobs_total"
JOBS_RUNNING = "genserve_jobs_running"
JOBS_BY_STATE = "genserve_jobs"
HTTP_SECONDS = "genserve_http_request_seconds"
ALL = (INFERENCE_SECONDS, GPU_SECONDS, LORA_CACHE, QUEUE_WAIT, JOBS_FINISHED, JOBS_RUNNING,
       JOBS_BY_STATE, HTTP_SECONDS)


def _enabled() -> bool:
    try:
        import ray

        return ray.is_initialized()
    except Exception:
        return False


@functools.cache
def _metric(name: str) -> Any:
    """The process's one instance of metric ``name`` (Ray keys series by name + tags, but each
    `Metric` object registers itself, so creating one per call would leak)."""
    from ray.util.metrics import Counter, Gauge, Histogram

    specs = {
        INFERENCE_SECONDS: (Histogram, "Model time per call (not time queued), by pipeline "
                            "and deployment.", ("pipeline", "deployment"), LATENCY_BUCKETS),
        GPU_SECONDS: (Counter, "GPU-seconds used: inference seconds x the replica's GPU "
                      "fraction (num_gpus).", ("pipeline", "deployment"), None),
        LORA_CACHE: (Counter, "LoRA lookups in a replica's multiplexed cache, by result "
                     "(hit: already loaded; miss: loaded from disk).",
                     ("deployment", "result"), None),
        QUEUE_WAIT: (Histogram, "Queue jobs: seconds from submission to first claim by a "
                     "worker.", ("endpoint", "kind"), QUEUE_BUCKETS),
        JOBS_FINISHED: (Counter, "Queue jobs that reached a terminal state.",
                        ("endpoint", "state"), None),
        JOBS_BY_STATE: (Gauge, "Queue jobs in the database per state (terminal ones per "
                        "outcome: COMPLETED:OK, COMPLETED:ERROR, ...); every worker replica "
                        "reports the same totals, so aggregate with max, not sum.",
                        ("state",), None),
        JOBS_RUNNING: (Gauge, "Queue jobs a worker replica is running now.", ("kind",), None),
        HTTP_SECONDS: (Histogram, "Ingress request latency, by pipeline and status class "
                       "(2xx, 4xx, 5xx).", ("pipeline", "status"), LATENCY_BUCKETS),
    }
    cls, description, tags, buckets = specs[name]
    # Ray encodes descriptions as ASCII: a "×" here makes creating the metric fail.
    assert description.isascii(), name
    if buckets is not None:
        return cls(name, description=description, boundaries=buckets, tag_keys=tags)
    return cls(name, description=description, tag_keys=tags)


def _record(name: str, method: str, value: float, tags: dict[str, str]) -> None:
    if not _enabled():
        return
    try:
        getattr(_metric(name), method)(value, tags=tags)
    except Exception:  # metrics must never fail a request
        log.debug("could not record %s", name, exc_info=True)


@functools.cache
def gpu_fraction() -> float:
    """This replica's share of a GPU (its ``ray_actor_options.num_gpus``), 0.0 outside Ray.

    Read from the resources Ray assigned to the actor, so it is what the scheduler reserved,
    also when the YAML overrides the decorator's default."""
    if not _enabled():
        return 0.0
    try:
        import ray

        return float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))
    except Exception:
        return 0.0


def observe_inference(pipeline: str, deployment: str, seconds: float) -> float:
    """Record one model call; returns its GPU-seconds (seconds × this replica's GPU share)."""
    gpu_seconds = seconds * gpu_fraction()
    tags = {"pipeline": pipeline, "deployment": deployment}
    _record(INFERENCE_SECONDS, "observe", seconds, tags)
    if gpu_seconds > 0:
        _record(GPU_SECONDS, "inc", gpu_seconds, tags)
    return gpu_seconds


def lora_lookup(deployment: str, hit: bool) -> None:
    _record(LORA_CACHE, "inc", 1.0, {"deployment": deployment,
                                     "result": "hit" if hit else "miss"})


def queue_wait(endpoint: str, kind: str, seconds: float) -> None:
    _record(QUEUE_WAIT, "observe", max(seconds, 0.0), {"endpoint": endpoint, "kind": kind})


def job_finished(endpoint: str, state: str) -> None:
    _record(JOBS_FINISHED, "inc", 1.0, {"endpoint": endpoint, "state": state})


def jobs_by_state(counts: dict[str, int]) -> None:
    for state, count in counts.items():
        _record(JOBS_BY_STATE, "set", float(count), {"state": state})


def jobs_running(kind: str, count: int) -> None:
    _record(JOBS_RUNNING, "set", float(count), {"kind": kind})


def http_request(pipeline: str | None, status: int, seconds: float) -> None:
    _record(HTTP_SECONDS, "observe", seconds,
            {"pipeline": pipeline or "other", "status": f"{status // 100}xx"})

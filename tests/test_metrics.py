"""genserve's Prometheus metrics, scraped from the node's Ray metrics agent as Prometheus would:
inference seconds and GPU-seconds per deployment, LoRA cache hits/misses, queue wait, jobs per
state and ingress latency, each with only low-cardinality tags."""

from __future__ import annotations

import re
import time
import urllib.request

import pytest

from tests.loras import write_lora
from tests.util import tiny_request

SERIES = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
# Ray flushes each process's metrics to its agent every few seconds (10 s here, seen).
DEADLINE_S = 30
# The tags we set; Ray adds its own (WorkerId, Component, SessionName, …).
OUR_TAGS = {"pipeline", "deployment", "endpoint", "state", "kind", "result", "status"}


def scrape(port: int) -> list[tuple[str, dict[str, str], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = []
    for line in text.splitlines():
        match = SERIES.match(line)
        if match and not line.startswith("#"):
            name, labels, value = match.groups()
            samples.append((name, dict(LABEL.findall(labels or "")), float(value)))
    return samples


def total(samples, name: str, **tags: str) -> float:
    """Sum over every series (one per worker process) of ``name`` with these tags."""
    return sum(v for n, labels, v in samples
               if n == name and all(labels.get(k) == t for k, t in tags.items()))


def test_every_metric_can_be_created():
    from genserve import metrics

    # Checks what Ray would refuse only inside a worker (a non-ASCII description, a bad name).
    for name in metrics.ALL:
        assert metrics._metric(name).info["name"] == name


@pytest.fixture(scope="module")
def metrics_port(ray_cluster) -> int:
    import ray

    # ray.init starts a metrics agent on every node; the driver's node is this one.
    port = ray._private.worker.global_worker.node.metrics_export_port
    assert port and any(n.get("MetricsExportPort") == port for n in ray.nodes())
    return port


@pytest.fixture(scope="module")
def traffic(client, lora_dir, tiny_models) -> None:
    """Two plain generations, a LoRA twice (a miss, then a hit) and one queue job."""
    for seed in (1, 2):
        r = client.post("/generate", json=tiny_request(num_inference_steps=2, seed=seed))
        assert r.status_code == 200, r.text
    write_lora(lora_dir, "metrics-lora", tiny_models["sdxl-base"], seed=31)
    for _ in range(2):
        r = client.post("/generate", json=tiny_request(num_inference_steps=2, seed=3,
                                                       lora_id="metrics-lora",
                                                       safety_filter=False))
        assert r.status_code == 200, r.text
    r = client.post("/run/genserve/sdxl", json=tiny_request(num_inference_steps=2))
    assert r.status_code == 200, r.text


def eventually(port: int, check) -> list:
    """Scrape until ``check(samples)`` passes (Ray exports with a delay); the last failure
    otherwise."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        samples = scrape(port)
        try:
            check(samples)
            return samples
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(1)


def test_inference_and_gpu_seconds_per_deployment(metrics_port, traffic):
    def check(s):
        for deployment in ("SDXLBase", "SafetyChecker"):
            tags = {"pipeline": "sdxl", "deployment": deployment}
            assert total(s, "ray_genserve_inference_seconds_count", **tags) >= 3, deployment
            assert total(s, "ray_genserve_inference_seconds_sum", **tags) > 0
            # Logical GPU fractions (0.45 and 0.1 in the YAML) make every second cost.
            assert total(s, "ray_genserve_gpu_seconds_total", **tags) > 0, deployment
        # Histogram buckets are cumulative and end at +Inf = count.
        inf = total(s, "ray_genserve_inference_seconds_bucket", deployment="SDXLBase", le="+Inf")
        assert inf == total(s, "ray_genserve_inference_seconds_count", deployment="SDXLBase")

    eventually(metrics_port, check)


def test_lora_cache_hits_and_misses(metrics_port, traffic):
    def check(s):
        assert total(s, "ray_genserve_lora_cache_total", deployment="SDXLBase",
                     result="miss") >= 1
        assert total(s, "ray_genserve_lora_cache_total", deployment="SDXLBase",
                     result="hit") >= 1

    eventually(metrics_port, check)


def test_queue_wait_and_job_states(metrics_port, traffic):
    def check(s):
        assert total(s, "ray_genserve_queue_wait_seconds_count", endpoint="sdxl",
                     kind="inference") >= 1
        assert total(s, "ray_genserve_jobs_total", endpoint="sdxl", state="OK") >= 1
        # Every worker replica reports the database's totals: take the largest.
        done = [v for n, labels, v in s
                if n == "ray_genserve_jobs" and labels.get("state") == "COMPLETED:OK"]
        assert done and max(done) >= 1

    eventually(metrics_port, check)


def test_ingress_latency_by_pipeline_and_status_class(metrics_port, traffic):
    def check(s):
        assert total(s, "ray_genserve_http_request_seconds_count", pipeline="sdxl",
                     status="2xx") >= 5

    eventually(metrics_port, check)


def test_tags_stay_low_cardinality(metrics_port, traffic):
    def check(s):
        assert any(n.startswith("ray_genserve_") for n, _, _ in s)

    samples = eventually(metrics_port, check)
    for name, labels, _ in samples:
        if name.startswith("ray_genserve_"):
            ours = {k: v for k, v in labels.items() if k in OUR_TAGS}
            # No request ids, LoRA ids, paths or user data in any tag value.
            assert all("/" not in v and "metrics-lora" not in v and len(v) <= 32
                       for v in ours.values()), (name, ours)

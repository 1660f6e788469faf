"""What does the job queue cost: the same SDXL request direct (`POST /generate`) vs through the
queue (`POST /run/genserve/sdxl`: submit, a worker claims it from the job store, runs it,
stores the row), and how fast submits are answered alone and in a burst.

Deploys the SDXL part of ``serve_config.yaml`` plus its `JobWorker`s with the tiny models and
times over real HTTP, in one run:

- ``direct`` / ``queued``: sequential requests, median and p90 (ratio = the queue's overhead);
- ``submit``: sequential submits (the row is committed before the answer);
- ``burst``: B submits from C threads at once: submit p50/p99 and the time until every job
  is COMPLETED, vs the same B requests sent direct from C threads.

    .venv/bin/python -m bench.queue            # ~2 min on an idle 2-core box
"""

from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import cli, free_port, serve_url, shared_cluster, write_results

KEY = "bench-key-0123456789"
DEPLOYMENTS = ("Ingress", "JobWorker", "SDXLBase", "SDXLRefiner", "SafetyChecker")


def deploy(state_dir: Path) -> str:
    from bench.lora_cache import TINY_DIR
    from genserve import launch, tiny

    models = tiny.build(TINY_DIR)
    config = launch.load_config()
    app = next(a for a in config["applications"] if a["name"] == launch.APP_NAME)
    app["deployments"] = [d for d in app["deployments"] if d["name"] in DEPLOYMENTS]
    one = {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}}
    port = free_port()
    config = launch.overlay(
        config, tiny_models_dir=str(next(iter(models.values())).parent), host="127.0.0.1",
        port=port, args={"llm": None, "tts": None, "video": None, "mesh3d": None,
                         "database_url": f"sqlite:///{state_dir / 'jobs.db'}",
                         "jobs": {"files_location": str(state_dir / "files")}},
        deployments={n: one for n in DEPLOYMENTS if n != "JobWorker"})
    launch.deploy(config, timeout_s=300)
    return serve_url()  # the proxy's own port: a running Serve (bench.run_all's) keeps its own


def _stats(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    return {"n": len(samples), "p50_ms": round(statistics.median(samples) * 1000, 1),
            "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 1),
            "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))] * 1000, 1)}


def _timed(client, path: str, body: dict) -> tuple[float, dict]:
    started = time.perf_counter()
    r = client.post(path, json=body)
    elapsed = time.perf_counter() - started
    if r.status_code != 200:
        raise RuntimeError(f"{path} answered {r.status_code}: {r.text[:300]}")
    return elapsed, r.json()


def measure(url: str, *, n: int, burst: int, concurrency: int, size: int = 64, steps: int = 2,
            key: str = KEY) -> dict[str, Any]:
    import httpx

    body = {"prompt": "a cat with a hat", "seed": 1, "num_inference_steps": steps,
            "width": size, "height": size, "safety_filter": False}
    headers = {"Authorization": f"Key {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=300) as client:
        for _ in range(3):  # warm both paths
            _timed(client, "/generate", body)
            _timed(client, "/run/genserve/sdxl", {**body, "sync_mode": True})
        direct = [_timed(client, "/generate", body)[0] for _ in range(n)]
        queued = [_timed(client, "/run/genserve/sdxl", {**body, "sync_mode": True})[0]
                  for _ in range(n)]
        submits = [_timed(client, "/queue/genserve/sdxl", {**body, "sync_mode": True})
                   for _ in range(n)]
        _wait_all(client, [s[1]["request_id"] for s in submits])

    def one(path: str, i: int) -> tuple[float, dict]:
        with httpx.Client(base_url=url, headers=headers, timeout=300) as c:
            return _timed(c, path, {**body, "seed": i, "sync_mode": True}
                          if "queue" in path else {**body, "seed": i})

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(lambda i: one("/queue/genserve/sdxl", i), range(burst)))
    with httpx.Client(base_url=url, headers=headers, timeout=300) as client:
        _wait_all(client, [a[1]["request_id"] for a in answers])
    burst_s = time.perf_counter() - started
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda i: one("/generate", i), range(burst)))
    direct_burst_s = time.perf_counter() - started

    out = {"direct": _stats(direct), "queued": _stats(queued),
           "submit": _stats([s[0] for s in submits]),
           "burst": {"jobs": burst, "concurrency": concurrency,
                     **{f"submit_{k}": v for k, v in _stats([a[0] for a in answers]).items()
                        if k != "n"},
                     "all_done_s": round(burst_s, 2), "direct_all_done_s": round(direct_burst_s, 2),
                     "distinct_ids": len({a[1]["request_id"] for a in answers})}}
    out["ratios"] = {
        "queued_over_direct_p50": round(out["queued"]["p50_ms"] / out["direct"]["p50_ms"], 2),
        "queue_overhead_p50_ms": round(out["queued"]["p50_ms"] - out["direct"]["p50_ms"], 1),
        "burst_time_queued_over_direct": round(burst_s / direct_burst_s, 2)}
    return out


def _wait_all(client, ids: list[str], timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    pending = list(ids)
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} jobs not COMPLETED")
        status = client.get(f"/queue/requests/{pending[0]}/status").json()
        if status["status"] == "COMPLETED":
            if status["error"]:
                raise RuntimeError(f"job {pending[0]} failed: {status['error']}")
            pending.pop(0)
        else:
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> Path:
    parser = cli("queue", __doc__)
    parser.add_argument("-n", type=int, default=20, help="sequential requests per path")
    parser.add_argument("--burst", type=int, default=100, help="jobs submitted at once")
    parser.add_argument("--concurrency", type=int, default=16, help="submitting threads")
    args = parser.parse_args(argv)
    import tempfile

    os.environ["GENSERVE_API_KEY"] = KEY
    with tempfile.TemporaryDirectory(prefix="genserve-bench-queue-") as d:
        os.environ["GENSERVE_STATE_DIR"] = d  # reaches replicas of a cluster started here
        with shared_cluster():
            figures = measure(deploy(Path(d)), n=args.n, burst=args.burst,
                              concurrency=args.concurrency)
    write_results(args.out, args, figures)
    for name in ("direct", "queued", "submit"):
        f = figures[name]
        print(f"{name:7} p50 {f['p50_ms']:7.1f} ms  p90 {f['p90_ms']:7.1f} ms  n={f['n']}")
    print(f"burst: {figures['burst']}")
    print(f"ratios: {figures['ratios']}")
    print(f"[queue] wrote {args.out}")
    return args.out


def headline(results: dict[str, Any]) -> list[tuple[str, float]]:
    """(figure, ratio) rows for `bench.run_all`'s table."""
    r, b = results["ratios"], results["burst"]
    return [(f"queued (`/run`) / direct p50 ({results['queued']['p50_ms']:.1f} vs "
             f"{results['direct']['p50_ms']:.1f} ms)", r["queued_over_direct_p50"]),
            (f"burst of {b['jobs']} from {b['concurrency']} threads, all done: queued / direct "
             f"({b['all_done_s']:.1f} vs {b['direct_all_done_s']:.1f} s)",
             r["burst_time_queued_over_direct"])]


if __name__ == "__main__":
    main()

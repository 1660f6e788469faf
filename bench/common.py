"""What the benchmarks share: a Ray cluster and a Serve HTTP port (their own, or the one already
running), the replica options that keep a comparison fair, a closed-loop load generator,
latency statistics and one way to write results (figures + machine + configuration) as JSON."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
# The tests' tiny-model directory (tests/conftest.py TINY_DIR), so one build serves both.
TINY_DIR = Path(os.environ.get("GENSERVE_TINY_DIR", ROOT / ".cache" / "tiny-models"))
KEY = "bench-key-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(module: str, doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's command line: ``python -m bench.<module>``, its docstring as the help,
    and ``--out`` (default ``bench/results/<module>.json``)."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.{module}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / f"{module}.json",
                        help="where the JSON results go")
    return parser


def write_results(out: Path, args: argparse.Namespace, figures: dict[str, Any]) -> Path:
    import ray

    results = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                           "ray": ray.__version__,
                           "load_avg_end": [round(x, 2) for x in os.getloadavg()]},
               "config": vars(args) | {"out": str(out)}, **figures}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))  # Paths in the config
    return out


# -- cluster ---------------------------------------------------------------------------------

def serve_url() -> str | None:
    """Base URL of the running Serve HTTP proxy (its scheme and port), None if Serve is not
    running. A second `serve.start` cannot move the proxy, so benches ask instead of picking."""
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return None
    http = client.http_config
    scheme = "https" if getattr(http, "ssl_certfile", None) else "http"
    return f"{scheme}://127.0.0.1:{http.port}"


@contextlib.contextmanager
def serving(cpus: float = 4, gpus: float = 0) -> Iterator[str]:
    """Yield the Serve base URL. Reuses the connected Ray and a running Serve (the test
    session's, or `bench.run_all`'s); otherwise starts a local Ray (``cpus``/``gpus`` logical)
    and Serve on a free loopback port, and stops both at the end."""
    import ray
    from ray import serve

    started_ray = not ray.is_initialized()
    if started_ray:
        # Worker logs stay in Ray's files: a bench prints one summary line.
        ray.init(num_cpus=cpus, num_gpus=gpus, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    url = serve_url()
    started_serve = url is None
    try:
        if started_serve:
            port = free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            url = f"http://127.0.0.1:{port}"
        yield url
    finally:
        if started_serve:
            serve.shutdown()
        if started_ray:
            ray.shutdown()


@contextlib.contextmanager
def shared_cluster() -> Iterator[None]:
    """For the benches that deploy genserve's own app from ``serve_config.yaml`` (lora_cache,
    queue). Alone: a local Ray sized from the YAML (logical GPUs, so its fractional placement
    works), stopped at the end. On a connected cluster (`bench.run_all`'s): the app is deleted
    at the end, and a "genserve" app already running is refused rather than replaced."""
    import ray
    from ray import serve

    from genserve import launch

    if not ray.is_initialized():
        need = launch.required_resources(launch.load_config())
        ray.init(num_cpus=need["CPU"], num_gpus=need["GPU"], include_dashboard=False,
                 log_to_driver=False)
        try:
            yield
        finally:
            serve.shutdown()
            ray.shutdown()
        return
    if serve_url() is not None and launch.APP_NAME in serve.status().applications:
        raise RuntimeError(f"an app named {launch.APP_NAME!r} is already running on this "
                           "cluster; this bench deploys its own and would replace it")
    try:
        yield
    finally:
        serve.delete(launch.APP_NAME)


@contextlib.contextmanager
def deployed(app, name: str, route_prefix: str | None = None) -> Iterator[Any]:
    """``serve.run`` an app under its own name (never "genserve"), delete it afterwards."""
    from ray import serve

    if name == "genserve":
        raise ValueError("benchmarks deploy their own apps; `name` must not be 'genserve'")
    handle = serve.run(app, name=name, route_prefix=route_prefix)
    try:
        yield handle
    finally:
        serve.delete(name)


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def replica_options(threads: int, gpus: float = 0.0, **env: str) -> dict[str, Any]:
    """``ray_actor_options`` for a bench replica: ``threads`` torch threads (the same count the
    in-process side of a comparison gets), no logical CPU, so a bench always fits next to
    the test session's app. A GPU share only where there is a GPU: on a CPU box the model runs
    on CPU either way, and a logical share could leave the replica pending."""
    # Ray sets OMP_NUM_THREADS from num_cpus unless it is already set; torch reads it at start.
    return {"num_cpus": 0, "num_gpus": gpus if has_cuda() else 0,
            "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(threads),
                                         "TOKENIZERS_PARALLELISM": "false", **env}}}


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """The in-process side of a comparison runs with as many torch threads as a replica."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# -- load and statistics ---------------------------------------------------------------------

def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def closed_loop(call: Callable[[int], Any], *, concurrency: int, requests: int
                ) -> tuple[list[float], float]:
    """``requests`` calls from ``concurrency`` threads, each sending its next request when the
    previous one answered (a closed loop: the offered load adapts to the server). Returns
    every latency and the wall time of the whole run."""
    latencies: list[float] = []
    errors: list[BaseException] = []
    counter = iter(range(requests))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None or errors:
                return
            try:
                elapsed = timed(lambda: call(i))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(exc)
                return
            with lock:
                latencies.append(elapsed)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return latencies, time.perf_counter() - started


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100), the usual reading of "p99" for small samples."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def stats(samples: list[float]) -> dict[str, Any]:
    """Seconds in, milliseconds out: n, p50, p90, p99, mean, min."""
    ms = [s * 1000 for s in samples]
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 2),
            "p90_ms": round(percentile(ms, 90), 2), "p99_ms": round(percentile(ms, 99), 2),
            "mean_ms": round(statistics.fmean(ms), 2), "min_ms": round(min(ms), 2)}


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")

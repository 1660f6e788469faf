"""R3: the same SDXL graph served two ways, under concurrent load.

- ``plain``: the book's approach, `bench.plain_app`: one FastAPI/uvicorn process with base,
  refiner and safety checker loaded in the app and called inline by the route;
- ``serve``: Ray Serve, a FastAPI ingress whose route is genserve's own composition
  (`deployments.routes.sdxl.generate`) over the real `SDXLBase`, `SDXLRefiner` and
  `SafetyChecker` deployments, one replica each.

Both answer the same ``POST /generate`` (tiny models, 64 px, ensemble mode: 1 base step and
1 refiner step, safety on, PNG data URIs) and run each model with ``--threads`` torch threads.
Neither has the genserve ingress's auth or usage logging. At each concurrency (1, 4, 16
closed-loop clients) both servers get ``--requests`` requests, plain first then Serve, after a
short warm-up; throughput and p50/p99 latency, and Serve's ratios to plain.

    .venv/bin/python -m bench.fastapi_vs_serve        # ~1 min on an idle 2-core box
"""

# No `from __future__ import annotations`: Serve rebuilds the ingress route's signature for
# FastAPI and needs the real classes, not strings (as in deployments/ingress.py).

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from ray import serve

from bench.common import (
    ROOT,
    TINY_DIR,
    cli,
    closed_loop,
    deployed,
    free_port,
    ratio,
    replica_options,
    serving,
    stats,
    write_results,
)
from genserve.schemas.sdxl import GenerateRequest, GenerateResponse

APP = "bench-fastapi-vs-serve"
BODY = {"prompt": "a cat with a hat", "width": 64, "height": 64, "num_inference_steps": 2,
        "is_ensemble": True, "refiner_ratio": 0.5, "seed": 1}
ROLES = ["sdxl-base", "sdxl-refiner", "sdxl-vae", "safety-checker"]

graph_api = FastAPI()


@serve.deployment(max_ongoing_requests=64)
@serve.ingress(graph_api)
class GraphIngress:
    def __init__(self, base, refiner, safety):
        self.base, self.refiner, self.safety = base, refiner, safety

    @graph_api.post("/generate", response_model=GenerateResponse)
    async def generate(self, body: GenerateRequest) -> GenerateResponse:
        from deployments.routes.sdxl import generate

        return await generate(self.base, self.refiner, self.safety, body)


def serve_graph(models: dict[str, Path], threads: int, lora_dir: str):
    from deployments.sdxl import SafetyChecker, SDXLBase, SDXLRefiner

    m = {k: str(v) for k, v in models.items()}
    loras = {"lora_dir": lora_dir}
    base = SDXLBase.options(ray_actor_options=replica_options(threads, 0.45)).bind(
        m["sdxl-base"], vae_id=m["sdxl-vae"], **loras)
    refiner = SDXLRefiner.options(ray_actor_options=replica_options(threads, 0.45)).bind(
        m["sdxl-refiner"], vae_id=m["sdxl-vae"], **loras)
    safety = SafetyChecker.options(ray_actor_options=replica_options(threads, 0.1)).bind(
        m["safety-checker"])
    return GraphIngress.options(ray_actor_options=replica_options(1)).bind(base, refiner,
                                                                            safety)


@contextlib.contextmanager
def plain_server(models_dir: Path, threads: int, timeout_s: float = 180) -> Iterator[str]:
    """`bench.plain_app` in a child process on a free loopback port; stopped at the end."""
    import httpx

    port = free_port()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "bench.plain_app", "--port", str(port),
                             "--models-dir", str(models_dir), "--threads", str(threads)],
                            cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"bench.plain_app exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"bench.plain_app not up after {timeout_s}s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def load(url: str, *, concurrency: int, requests: int, warmup: int) -> dict[str, Any]:
    import httpx

    # One kept-alive connection per client thread, as a real client pool would hold.
    mine = threading.local()
    clients: list[httpx.Client] = []

    def call(i: int) -> None:
        client = getattr(mine, "client", None)
        if client is None:
            client = mine.client = httpx.Client(base_url=url, timeout=300)
            clients.append(client)
        r = client.post("/generate", json=BODY)
        if r.status_code != 200:
            raise RuntimeError(f"{url}/generate answered {r.status_code}: {r.text[:300]}")

    try:
        closed_loop(call, concurrency=concurrency, requests=warmup)
        latencies, wall = closed_loop(call, concurrency=concurrency, requests=requests)
    finally:
        for c in clients:
            c.close()
    return {**stats(latencies), "throughput_rps": round(len(latencies) / wall, 2),
            "wall_s": round(wall, 2)}


def measure(url: str, *, requests: int, warmup: int, concurrency: list[int], threads: int,
            models_dir: Path = TINY_DIR) -> dict[str, Any]:
    from genserve import tiny

    models = tiny.build(models_dir, roles=ROLES)
    out: dict[str, Any] = {"levels": {}}
    with tempfile.TemporaryDirectory(prefix="genserve-bench-") as lora_dir, \
            plain_server(models_dir, threads) as plain_url, \
            deployed(serve_graph(models, threads, lora_dir), APP, f"/{APP}"):
        serve_url = f"{url}/{APP}"
        for c in concurrency:
            n = max(requests, 2 * c)  # every client sends at least two
            level = {"plain": load(plain_url, concurrency=c, requests=n, warmup=warmup),
                     "serve": load(serve_url, concurrency=c, requests=n, warmup=warmup)}
            p, s = level["plain"], level["serve"]
            level["ratios"] = {
                "throughput_serve_over_plain": ratio(s["throughput_rps"], p["throughput_rps"]),
                "p50_serve_over_plain": ratio(s["p50_ms"], p["p50_ms"]),
                "p99_serve_over_plain": ratio(s["p99_ms"], p["p99_ms"])}
            out["levels"][str(c)] = level
    out["ratios"] = {f"c{c}_{k}": v for c, level in out["levels"].items()
                     for k, v in level["ratios"].items()}
    return out


def headline(results: dict[str, Any]) -> list[tuple[str, float]]:
    rows = []
    for c, level in results["levels"].items():
        p, s, r = level["plain"], level["serve"], level["ratios"]
        rows.append((f"concurrency {c}: Serve / plain FastAPI throughput "
                     f"({s['throughput_rps']:.1f} vs {p['throughput_rps']:.1f} req/s; p50 "
                     f"{r['p50_serve_over_plain']:.2f}x, p99 {r['p99_serve_over_plain']:.2f}x)",
                     r["throughput_serve_over_plain"]))
    return rows


def main(argv: list[str] | None = None) -> Path:
    parser = cli("fastapi_vs_serve", __doc__)
    parser.add_argument("--requests", type=int, default=40, help="timed requests per level")
    parser.add_argument("--warmup", type=int, default=4, help="untimed requests per level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per model")
    args = parser.parse_args(argv)
    with serving() as url:
        figures = measure(url, requests=args.requests, warmup=args.warmup,
                          concurrency=args.concurrency, threads=args.threads)
    write_results(args.out, args, {"benchmark": "fastapi_vs_serve", **figures})
    summary = ", ".join(f"c={c} {lv['ratios']['throughput_serve_over_plain']:.2f}x "
                        f"(p99 {lv['ratios']['p99_serve_over_plain']:.2f}x)"
                        for c, lv in figures["levels"].items())
    print(f"[fastapi_vs_serve] Serve / plain FastAPI throughput: {summary}; wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()

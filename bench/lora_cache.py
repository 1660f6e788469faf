"""What does serving a personalization LoRA cost per request: cache miss vs cache hit vs none?

Deploys the SDXL part of ``serve_config.yaml`` (ingress, base, refiner, safety) with the tiny
models, writes K LoRAs the way the training job does (`tests/loras.py`: seeded random adapter
weights + token embeddings), and times ``POST /generate`` over real HTTP in one run:

- ``none``: no ``lora_id``;
- ``miss``: the first request for each LoRA (load from disk into the replica);
- ``hit``: repeated requests for a LoRA already loaded (adapter switch only).

Then ``churn``: requests cycling over more LoRAs than ``max_loras_per_replica``, so every
request evicts one and loads one (the LRU's worst case).

    .venv/bin/python -m bench.lora_cache            # ~2 min on an idle 2-core box
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import cli, free_port, serve_url, shared_cluster, write_results

ROOT = Path(__file__).resolve().parent.parent
TINY_DIR = Path(os.environ.get("GENSERVE_TINY_DIR", ROOT / ".cache" / "tiny-models"))
SDXL_DEPLOYMENTS = ("Ingress", "SDXLBase", "SDXLRefiner", "SafetyChecker")
KEY = "bench-key-0123456789"


def deploy(lora_dir: Path, cache: int) -> str:
    """The SDXL app from the YAML, tiny models, one replica each; returns its base URL."""
    from genserve import launch, tiny

    models = tiny.build(TINY_DIR)
    config = launch.load_config()
    app = next(a for a in config["applications"] if a["name"] == launch.APP_NAME)
    app["deployments"] = [d for d in app["deployments"] if d["name"] in SDXL_DEPLOYMENTS]
    one = {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}}
    sdxl = {**app["args"]["sdxl"], "lora_dir": str(lora_dir), "max_loras_per_replica": cache}
    port = free_port()
    config = launch.overlay(
        config, tiny_models_dir=str(next(iter(models.values())).parent), host="127.0.0.1",
        port=port, args={"sdxl": sdxl, "llm": None, "tts": None, "video": None,
                         "mesh3d": None},
        deployments={name: one for name in SDXL_DEPLOYMENTS})
    launch.deploy(config, timeout_s=300)
    return serve_url()  # the proxy's own port: a running Serve (bench.run_all's) keeps its own


def write_loras(lora_dir: Path, count: int, prefix: str = "bench") -> list[str]:
    from genserve import tiny
    from tests.loras import write_lora

    base = tiny.build(TINY_DIR, roles=["sdxl-base"])["sdxl-base"]
    ids = [f"{prefix}-{i}" for i in range(count)]
    for i, lora_id in enumerate(ids):
        write_lora(lora_dir, lora_id, base, seed=i, embeddings=True)
    return ids


def timed(client, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    r = client.post("/generate", json=body)
    elapsed = time.perf_counter() - started
    if r.status_code != 200:
        raise RuntimeError(f"/generate answered {r.status_code}: {r.text[:300]}")
    return elapsed


def stats(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    return {"n": len(samples), "median_ms": round(statistics.median(samples) * 1000, 1),
            "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 1),
            "min_ms": round(ordered[0] * 1000, 1)}


def measure(url: str, ids: list[str], *, cache: int, hits: int, size: int, steps: int,
            key: str = KEY) -> dict[str, Any]:
    """Time the phases against a running app whose SDXL replicas hold ``cache`` LoRAs."""
    import httpx

    body = {"prompt": "a portrait of TOK", "seed": 1, "num_inference_steps": steps,
            "width": size, "height": size, "safety_filter": False}
    with httpx.Client(base_url=url, headers={"Authorization": f"Key {key}"},
                      timeout=120) as client:
        for _ in range(3):  # warm the graph (first requests compile/allocate)
            timed(client, body)
        none = [timed(client, body) for _ in range(hits * 2)]
        warm = ids[:cache]  # at most the cache size, so misses evict nothing
        miss, hit = [], []
        for lora_id in warm:
            miss.append(timed(client, {**body, "lora_id": lora_id}))
            hit += [timed(client, {**body, "lora_id": lora_id}) for _ in range(hits)]
        # Every request a different LoRA than the `cache` most recent: evict + load each time.
        churn = [timed(client, {**body, "lora_id": ids[i % len(ids)]})
                 for i in range(cache, cache + 2 * len(ids))]
    out = {"none": stats(none), "miss": stats(miss), "hit": stats(hit), "churn": stats(churn)}
    base = out["none"]["median_ms"]
    out["ratios"] = {k: round(out[k]["median_ms"] / base, 2) for k in ("miss", "hit", "churn")}
    out["ratios"]["miss_over_hit"] = round(out["miss"]["median_ms"] / out["hit"]["median_ms"], 2)
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = cli("lora_cache", __doc__)
    parser.add_argument("--loras", type=int, default=6, help="LoRAs written (> --cache)")
    parser.add_argument("--cache", type=int, default=4, help="max_loras_per_replica")
    parser.add_argument("--hits", type=int, default=5, help="repeats per loaded LoRA")
    parser.add_argument("--size", type=int, default=64, help="image side, pixels")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps")
    args = parser.parse_args(argv)
    if args.loras <= args.cache:
        parser.error("--loras must exceed --cache (the churn phase needs evictions)")
    os.environ["GENSERVE_API_KEY"] = KEY  # replicas inherit the driver's environment
    with shared_cluster(), tempfile.TemporaryDirectory(prefix="genserve-bench-loras-") as d:
        ids = write_loras(Path(d), args.loras)
        url = deploy(Path(d), args.cache)
        figures = measure(url, ids, cache=args.cache, hits=args.hits, size=args.size,
                          steps=args.steps)
    write_results(args.out, args, figures)
    for name in ("none", "miss", "hit", "churn"):
        f = figures[name]
        print(f"{name:6} median {f['median_ms']:7.1f} ms  p90 {f['p90_ms']:7.1f} ms  n={f['n']}")
    print(f"ratios vs none: {figures['ratios']}")
    print(f"[lora_cache] wrote {args.out}")
    return args.out


def headline(results: dict[str, Any]) -> list[tuple[str, float]]:
    """(figure, ratio) rows for `bench.run_all`'s table."""
    r, base = results["ratios"], results["none"]["median_ms"]
    return [(f"LoRA cache hit / no LoRA, median ({results['hit']['median_ms']:.1f} vs "
             f"{base:.1f} ms)", r["hit"]),
            (f"LoRA cache miss / no LoRA ({results['miss']['median_ms']:.1f} ms)", r["miss"]),
            (f"LoRA churn (evict + load) / no LoRA ({results['churn']['median_ms']:.1f} ms)",
             r["churn"])]


if __name__ == "__main__":
    main()

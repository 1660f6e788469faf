"""R1: what Ray Serve adds to a model call: HTTP through Serve vs the same call in-process.

For each model, requests are interleaved (one of each path per round, so drift in the box's
load hits all paths alike), sequentially (concurrency 1):

- ``direct``: the model called in this process (the pipeline object, or the stand-in's work);
- ``handle``: a `DeploymentHandle` call from this process to the model's replica;
- ``http``: ``POST`` through Serve's HTTP proxy to a thin ingress (`bench.standins.Relay`-like,
  no validation or encoding) that makes the one handle call: proxy + ingress + one hop.

Models: ``sdxl`` (the tiny SDXL base through the real `deployments.sdxl.SDXLBase`, whose
`SDXLBasePipeline` is also the in-process model; 64 px, 2 steps, image out) and two 50 ms
stand-ins, ``sleep`` (the replica waits, as on a GPU) and ``spin`` (a core is busy). The
overhead is the Serve path's percentile minus the in-process one's, as a fraction of the
in-process median (the model time): p50 against p50, p99 against p99.

    .venv/bin/python -m bench.serve_overhead            # ~1 min on an idle 2-core box
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ray import serve

from bench.common import (
    TINY_DIR,
    cli,
    deployed,
    ratio,
    replica_options,
    serving,
    stats,
    timed,
    torch_threads,
    write_results,
)

MODELS = ("sdxl", "sleep", "spin")
PROMPT = "a cat with a hat"


@serve.deployment(max_ongoing_requests=64)
class SDXLRelay:
    """HTTP → one `SDXLBase.generate` hop → the image's raw RGB bytes (no PNG: encoding is
    the app's work, not Serve's)."""

    def __init__(self, base):
        self.base = base

    async def __call__(self, request) -> Any:
        from starlette.responses import Response

        from genserve.pipelines.params import BaseParams

        batch = await self.base.generate.remote(BaseParams(**await request.json()))
        return Response(batch.images[0].tobytes(), media_type="application/octet-stream")


def _sdxl_paths(models: dict[str, Path], body: dict[str, Any], threads: int, lora_dir: str):
    """(in-process call, app, handle call) for the tiny SDXL base."""
    from deployments.sdxl import SDXLBase
    from genserve.pipelines.params import BaseParams
    from genserve.pipelines.sdxl_base import SDXLBasePipeline

    pipeline = SDXLBasePipeline(str(models["sdxl-base"]), vae_id=str(models["sdxl-vae"]))
    base = SDXLBase.options(num_replicas=1, ray_actor_options=replica_options(threads, 0.45)
                            ).bind(str(models["sdxl-base"]), vae_id=str(models["sdxl-vae"]),
                                   lora_dir=lora_dir)
    app = SDXLRelay.options(ray_actor_options=replica_options(1)).bind(base)

    def direct() -> None:
        pipeline.generate(BaseParams(**body)).images[0].tobytes()

    def handle_call() -> None:
        _handle("SDXLBase", "sdxl").generate.remote(BaseParams(**body)).result()

    return direct, app, handle_call


def _standin_paths(kind: str, work_ms: float, threads: int):
    from bench.standins import FixedCost, Relay, work

    model = FixedCost.options(num_replicas=1, ray_actor_options=replica_options(threads)
                              ).bind(work_ms, kind)
    app = Relay.options(ray_actor_options=replica_options(1)).bind(model)

    def handle_call() -> None:
        _handle("FixedCost", kind).run.remote().result()

    return (lambda: work(work_ms, kind)), app, handle_call


def _app_name(model: str) -> str:
    return f"bench-overhead-{model}"


_handles: dict[tuple[str, str], Any] = {}


def _handle(deployment: str, model: str):
    """One handle per deployment, made on first use (after the deploy): a handle's first call
    sets up its router, which is not the per-request cost being measured."""
    key = (deployment, _app_name(model))
    if key not in _handles:
        _handles[key] = serve.get_deployment_handle(deployment, app_name=key[1])
    return _handles[key]


def measure(url: str, *, n: int, warmup: int, work_ms: float, size: int, steps: int,
            threads: int, models: tuple[str, ...] = MODELS) -> dict[str, Any]:
    import httpx

    from genserve import tiny

    body = {"prompt": PROMPT, "height": size, "width": size, "steps": steps, "seed": 1}
    out: dict[str, Any] = {"models": {}}
    with tempfile.TemporaryDirectory(prefix="genserve-bench-") as lora_dir, \
            httpx.Client(timeout=120) as client, torch_threads(threads):
        for model in models:
            if model == "sdxl":
                direct, app, handle_call = _sdxl_paths(
                    tiny.build(TINY_DIR, roles=["sdxl-base", "sdxl-vae"]), body, threads,
                    lora_dir)
            else:
                direct, app, handle_call = _standin_paths(model, work_ms, threads)
            name = _app_name(model)
            _handles.clear()  # handles of an earlier run's (deleted) apps
            with deployed(app, name, f"/{name}"):

                def http_call() -> None:
                    r = client.post(f"{url}/{name}", json=body)
                    r.raise_for_status()

                paths = {"direct": direct, "handle": handle_call, "http": http_call}
                samples: dict[str, list[float]] = {p: [] for p in paths}
                for i in range(warmup + n):
                    for path, call in paths.items():
                        elapsed = timed(call)
                        if i >= warmup:
                            samples[path].append(elapsed)
            out["models"][model] = _summarize(samples)
    out["ratios"] = {f"{m}_{k}": v for m, figs in out["models"].items()
                     for k, v in figs["overhead"].items() if k.endswith("_frac")}
    return out


def _summarize(samples: dict[str, list[float]]) -> dict[str, Any]:
    figs = {path: stats(s) for path, s in samples.items()}
    model = figs["direct"]["p50_ms"]
    overhead: dict[str, float] = {}
    for path in ("handle", "http"):
        for q in ("p50", "p99"):
            added = figs[path][f"{q}_ms"] - figs["direct"][f"{q}_ms"]
            overhead[f"{path}_{q}_ms"] = round(added, 2)
            overhead[f"{path}_{q}_frac"] = ratio(added, model)  # of the model time
    return {**figs, "overhead": overhead}


def headline(results: dict[str, Any]) -> list[tuple[str, float]]:
    """(figure, ratio) rows for `bench.run_all`'s table."""
    rows = []
    for model, f in results["models"].items():
        o = f["overhead"]
        rows.append((f"{model}: HTTP overhead p50 / p99 as a fraction of the model's "
                     f"{f['direct']['p50_ms']:.1f} ms ({o['http_p50_ms']:+.1f} / "
                     f"{o['http_p99_ms']:+.1f} ms); p99 frac {o['http_p99_frac']:.2f}",
                     o["http_p50_frac"]))
    return rows


def main(argv: list[str] | None = None) -> Path:
    parser = cli("serve_overhead", __doc__)
    parser.add_argument("-n", type=int, default=60, help="timed requests per path and model")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    parser.add_argument("--work-ms", type=float, default=50.0, help="stand-ins' cost")
    parser.add_argument("--size", type=int, default=64, help="SDXL image side, pixels")
    parser.add_argument("--steps", type=int, default=2, help="SDXL denoising steps")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads, in-process and per model replica alike")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    args = parser.parse_args(argv)
    with serving() as url:
        figures = measure(url, n=args.n, warmup=args.warmup, work_ms=args.work_ms,
                          size=args.size, steps=args.steps, threads=args.threads,
                          models=tuple(args.models))
    write_results(args.out, args, {"benchmark": "serve_overhead", **figures})
    summary = ", ".join(f"{m} {f['overhead']['http_p50_frac']:+.1%} p50 / "
                        f"{f['overhead']['http_p99_frac']:+.1%} p99"
                        for m, f in figures["models"].items())
    print(f"[serve_overhead] HTTP through Serve vs in-process, overhead of model time: "
          f"{summary}; wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()

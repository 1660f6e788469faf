"""R2: what one more `DeploymentHandle` hop costs: the genserve shape (ingress → base →
refiner, each stage its own deployment) vs fewer deployments doing the same work.

Stand-ins with a fixed cost (`bench.standins`), so the work is identical in every layout and
what differs is the hops: each stage costs ``--stage-ms`` (sleep, as on a GPU) and hands the
next one a ``--payload-kb`` payload (128 KB: SDXL's 1024 px latents in fp16). Layouts, all
over HTTP through the same proxy, requests interleaved round by round:

- ``fused`` (0 hops): the ingress does both stages itself (`standins.Fused`);
- ``one`` (1 hop): ingress → one deployment doing both stages;
- ``chain`` (2 hops): ingress → base → refiner, the base's response passed straight into the
  refiner call as genserve's ingress does (`standins.Relay`).

The hop cost is the slope over 0, 1, 2 hops: (chain − fused) / 2 at p50, as a fraction of the
work (2 × stage). ``--real`` adds the tiny SDXL graph: ingress → `SDXLBase` → `SDXLRefiner`
(the real deployments, ensemble mode, 64 px, 1 + 1 steps) vs one deployment holding both
pipelines and running them inline.

    .venv/bin/python -m bench.handle_hops            # ~1 min on an idle 2-core box
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
    write_results,
)

APP = "bench-hops"
REAL_BODY = {"prompt": "a cat with a hat", "width": 64, "height": 64, "num_inference_steps": 2,
             "is_ensemble": True, "refiner_ratio": 0.5, "safety_filter": False, "seed": 1}


def _standin_layouts(stage_ms: float, payload: int, threads: int) -> dict[str, Any]:
    from bench.standins import FixedCost, Fused, Relay

    opts = replica_options(threads)
    return {
        "fused": Fused.options(ray_actor_options=opts).bind([stage_ms, stage_ms], "sleep",
                                                             payload),
        "one": Relay.options(ray_actor_options=opts).bind(
            FixedCost.options(name="Both", ray_actor_options=opts).bind(2 * stage_ms, "sleep",
                                                                         payload)),
        "chain": Relay.options(ray_actor_options=opts).bind(
            FixedCost.options(name="Base", ray_actor_options=opts).bind(stage_ms, "sleep",
                                                                         payload),
            FixedCost.options(name="Refiner", ray_actor_options=opts).bind(stage_ms, "sleep")),
    }


@serve.deployment(max_ongoing_requests=64)
class RealChain:
    """HTTP → base → refiner with the real deployments, composed as genserve's ingress does
    (`deployments.routes.sdxl.sdxl_images`, safety off)."""

    def __init__(self, base, refiner):
        self.base, self.refiner = base, refiner

    async def __call__(self, request) -> Any:
        from starlette.responses import Response

        from deployments.routes.sdxl import sdxl_images
        from genserve.schemas.sdxl import GenerateRequest

        body = GenerateRequest(**await request.json())
        batch = await sdxl_images(self.base, self.refiner, None, body, body.seed)
        return Response(batch.images[0].tobytes())


@serve.deployment(max_ongoing_requests=64)
class RealFused:
    """HTTP → both pipelines in this replica, inline (the same plan, no hop)."""

    def __init__(self, base_dir: str, refiner_dir: str, vae_dir: str):
        from genserve.pipelines.sdxl_base import SDXLBasePipeline
        from genserve.pipelines.sdxl_refiner import SDXLRefinerPipeline

        self.base = SDXLBasePipeline(base_dir, vae_id=vae_dir)
        self.refiner = SDXLRefinerPipeline(refiner_dir, vae_id=vae_dir)

    def _run(self, body) -> bytes:
        from deployments.routes.sdxl import plan

        p = plan(body, body.seed)
        return self.refiner.refine(self.base.generate(p.base), p.refine).images[0].tobytes()

    async def __call__(self, request) -> Any:
        from starlette.responses import Response

        from genserve.schemas.sdxl import GenerateRequest

        body = GenerateRequest(**await request.json())
        return Response(await asyncio.to_thread(self._run, body))


def _real_layouts(threads: int, lora_dir: str) -> dict[str, Any]:
    from deployments.sdxl import SDXLBase, SDXLRefiner
    from genserve import tiny

    m = {k: str(v) for k, v in tiny.build(TINY_DIR, roles=["sdxl-base", "sdxl-refiner",
                                                            "sdxl-vae"]).items()}
    opts = replica_options(threads)
    base = SDXLBase.options(ray_actor_options=replica_options(threads, 0.45)).bind(
        m["sdxl-base"], vae_id=m["sdxl-vae"], lora_dir=lora_dir)
    refiner = SDXLRefiner.options(ray_actor_options=replica_options(threads, 0.45)).bind(
        m["sdxl-refiner"], vae_id=m["sdxl-vae"], lora_dir=lora_dir)
    return {"real-fused": RealFused.options(ray_actor_options=replica_options(threads, 0.9)
                                            ).bind(m["sdxl-base"], m["sdxl-refiner"],
                                                   m["sdxl-vae"]),
            "real-chain": RealChain.options(ray_actor_options=opts).bind(base, refiner)}


def _interleaved(client, url: str, layouts: dict[str, Any], body: dict[str, Any], *, n: int,
                 warmup: int) -> dict[str, dict[str, Any]]:
    """Deploy every layout side by side, then time one request to each per round."""
    names = {layout: f"{APP}-{layout}" for layout in layouts}
    samples: dict[str, list[float]] = {layout: [] for layout in layouts}
    with contextlib.ExitStack() as apps:
        for layout, app in layouts.items():
            apps.enter_context(deployed(app, names[layout], f"/{names[layout]}"))
        for i in range(warmup + n):
            for layout in layouts:
                elapsed = timed(lambda: client.post(f"{url}/{names[layout]}",
                                                    json=body).raise_for_status())
                if i >= warmup:
                    samples[layout].append(elapsed)
    return {layout: stats(s) for layout, s in samples.items()}


def measure(url: str, *, n: int, warmup: int, stage_ms: float, payload_kb: int, threads: int,
            real: bool) -> dict[str, Any]:
    import httpx

    out: dict[str, Any] = {}
    with httpx.Client(timeout=120) as client:
        out["layouts"] = _interleaved(client, url, _standin_layouts(
            stage_ms, payload_kb * 1024, threads), {}, n=n, warmup=warmup)
        lay = out["layouts"]
        work = 2 * stage_ms
        hop = {q: round((lay["chain"][f"{q}_ms"] - lay["fused"][f"{q}_ms"]) / 2, 2)
               for q in ("p50", "p99")}
        out["hop_ms"] = hop
        out["ratios"] = {"hop_p50_frac_of_work": ratio(hop["p50"], work),
                         "hop_p99_frac_of_work": ratio(hop["p99"], work),
                         "chain_over_fused_p50": ratio(lay["chain"]["p50_ms"],
                                                       lay["fused"]["p50_ms"]),
                         "one_over_fused_p50": ratio(lay["one"]["p50_ms"],
                                                     lay["fused"]["p50_ms"])}
        if real:
            with tempfile.TemporaryDirectory(prefix="genserve-bench-") as lora_dir:
                real_figs = _interleaved(client, url, _real_layouts(threads, lora_dir),
                                         REAL_BODY, n=n, warmup=warmup)
            out["layouts"].update(real_figs)
            out["ratios"]["real_chain_over_fused_p50"] = ratio(
                real_figs["real-chain"]["p50_ms"], real_figs["real-fused"]["p50_ms"])
            out["ratios"]["real_hop_p50_frac"] = ratio(
                (real_figs["real-chain"]["p50_ms"] - real_figs["real-fused"]["p50_ms"]) / 2,
                real_figs["real-fused"]["p50_ms"])
    return out


def headline(results: dict[str, Any]) -> list[tuple[str, float]]:
    r, hop = results["ratios"], results["hop_ms"]
    work = 2 * results["config"]["stage_ms"]
    rows = [(f"stand-ins: cost per handle hop p50 as a fraction of {work:g} ms work "
             f"(+{hop['p50']:.1f} ms/hop, p99 +{hop['p99']:.1f} ms)", r["hop_p50_frac_of_work"])]
    if "real_hop_p50_frac" in r:
        lay = results["layouts"]
        rows.append((f"tiny SDXL: per hop p50 as a fraction of the fused graph's "
                     f"{lay['real-fused']['p50_ms']:.1f} ms (chain "
                     f"{lay['real-chain']['p50_ms']:.1f} ms)", r["real_hop_p50_frac"]))
    return rows


def main(argv: list[str] | None = None) -> Path:
    parser = cli("handle_hops", __doc__)
    parser.add_argument("-n", type=int, default=50, help="timed requests per layout")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    parser.add_argument("--stage-ms", type=float, default=25.0, help="each stage's cost")
    parser.add_argument("--payload-kb", type=int, default=128, help="base → refiner payload")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per replica")
    parser.add_argument("--real", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the tiny SDXL base → refiner graph")
    args = parser.parse_args(argv)
    with serving() as url:
        figures = measure(url, n=args.n, warmup=args.warmup, stage_ms=args.stage_ms,
                          payload_kb=args.payload_kb, threads=args.threads, real=args.real)
    write_results(args.out, args, {"benchmark": "handle_hops", **figures})
    lay, r = figures["layouts"], figures["ratios"]
    real = (f"; tiny SDXL chain/fused {r['real_chain_over_fused_p50']:.2f}x"
            if args.real else "")
    print(f"[handle_hops] p50 fused {lay['fused']['p50_ms']:.1f} / one {lay['one']['p50_ms']:.1f}"
          f" / chain {lay['chain']['p50_ms']:.1f} ms: +{figures['hop_ms']['p50']:.1f} ms per hop "
          f"({r['hop_p50_frac_of_work']:.1%} of {2 * args.stage_ms:g} ms){real}; "
          f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()

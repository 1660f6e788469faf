"""R4: what `@serve.batch` buys: the same deployment with batches of 1 vs N, under load.

``llm``: `deployments.llm.LLMChat` (tiny LLM, greedy, ``--tokens`` new tokens per answer)
through its batched ``chat``; ``tts``: `deployments.media.TextToSpeech` (tiny Bark) through
its batched ``synthesize``. Both take ``max_batch_size`` from their ``user_config``, so the
bench deploys each once with ``max_batch_size: 1`` and then re-applies the app with N (the
YAML's values: 8 for the LLM, 4 for TTS, same ``batch_wait_timeout_s``): Serve reconfigures the
running replica in place, as ``serve deploy`` does on a live cluster.

Load: ``--clients`` closed-loop clients calling the deployment's handle from this process
(no HTTP, so what differs is batching alone), ``--requests`` timed requests per setting after
a warm-up. Figures: throughput (requests/s, and tokens/s for the LLM), p50/p99 latency, the
LLM's batch sizes as run (`LLMChat.batch_stats`), and batch N's ratios to batch 1.

    .venv/bin/python -m bench.batching            # ~1 min on an idle 2-core box
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from bench.common import (
    TINY_DIR,
    cli,
    closed_loop,
    deployed,
    ratio,
    replica_options,
    serving,
    stats,
    write_results,
)

PATHS = ("llm", "tts")
BATCH = {"llm": 8, "tts": 4}  # serve_config.yaml's user_config max_batch_size
WAIT_S = 0.05                 # and its batch_wait_timeout_s


def _app(path: str, batch: int, threads: int, models: dict[str, Path]):
    from deployments.llm import LLMChat
    from deployments.media import TextToSpeech

    cls, model, gpus = ((LLMChat, models["llm"], 0.5) if path == "llm"
                        else (TextToSpeech, models["bark"], 0.25))
    return cls.options(num_replicas=1, ray_actor_options=replica_options(threads, gpus),
                       user_config={"max_batch_size": batch, "batch_wait_timeout_s": WAIT_S}
                       ).bind(str(model))


def _call(path: str, handle, tokens: int):
    from genserve.pipelines.llm import ChatParams
    from genserve.pipelines.tts import SpeechParams

    if path == "llm":
        def call(i: int) -> Any:
            return handle.chat.remote(ChatParams(
                [{"role": "user", "content": f"tell me about number {i}"}],
                max_new_tokens=tokens, do_sample=False, seed=i)).result()
    else:
        def call(i: int) -> Any:
            return handle.synthesize.remote(SpeechParams("hello world", seed=i)).result()
    return call


def _run(path: str, handle, *, clients: int, requests: int, warmup: int,
         tokens: int) -> dict[str, Any]:
    call = _call(path, handle, tokens)
    closed_loop(call, concurrency=clients, requests=warmup)
    before = len(handle.batch_stats.remote().result()["batch_sizes"]) if path == "llm" else 0
    latencies, wall = closed_loop(call, concurrency=clients, requests=requests)
    out = {**stats(latencies), "throughput_rps": round(requests / wall, 2),
           "wall_s": round(wall, 2)}
    if path == "llm":
        out["tokens_per_s"] = round(requests * tokens / wall, 1)
        sizes = handle.batch_stats.remote().result()["batch_sizes"][before:]
        out["batch_size_mean"] = round(statistics.fmean(sizes), 2) if sizes else None
    return out


def measure(*, clients: int, requests: int, warmup: int, tokens: int, threads: int,
            paths: tuple[str, ...] = PATHS) -> dict[str, Any]:
    from ray import serve

    from genserve import tiny

    models = tiny.build(TINY_DIR, roles=["llm", "bark"])
    out: dict[str, Any] = {"paths": {}}
    for path in paths:
        name, n = f"bench-batching-{path}", BATCH[path]
        figs: dict[str, Any] = {"max_batch_size": n}
        with deployed(_app(path, 1, threads, models), name) as handle:
            figs["batch_1"] = _run(path, handle, clients=clients, requests=requests,
                                   warmup=warmup, tokens=tokens)
            # Only user_config changes: the running replica is reconfigured, not restarted.
            handle = serve.run(_app(path, n, threads, models), name=name, route_prefix=None)
            figs[f"batch_{n}"] = _run(path, handle, clients=clients, requests=requests,
                                      warmup=warmup, tokens=tokens)
        one, many = figs["batch_1"], figs[f"batch_{n}"]
        figs["ratios"] = {"throughput": ratio(many["throughput_rps"], one["throughput_rps"]),
                          "p50": ratio(many["p50_ms"], one["p50_ms"]),
                          "p99": ratio(many["p99_ms"], one["p99_ms"])}
        out["paths"][path] = figs
    out["ratios"] = {f"{p}_{k}": v for p, f in out["paths"].items()
                     for k, v in f["ratios"].items()}
    return out


def headline(results: dict[str, Any]) -> list[tuple[str, float]]:
    rows = []
    clients = results["config"]["clients"]
    for path, f in results["paths"].items():
        n = f["max_batch_size"]
        one, many = f["batch_1"], f[f"batch_{n}"]
        seen = f", mean batch {many['batch_size_mean']}" if many.get("batch_size_mean") else ""
        rows.append((f"{path}: throughput with max_batch_size {n} / 1, {clients} clients "
                     f"({many['throughput_rps']:.1f} vs {one['throughput_rps']:.1f} req/s{seen};"
                     f" p50 {f['ratios']['p50']:.2f}x)", f["ratios"]["throughput"]))
    return rows


def main(argv: list[str] | None = None) -> Path:
    parser = cli("batching", __doc__)
    parser.add_argument("--clients", type=int, default=8, help="concurrent closed-loop clients")
    parser.add_argument("--requests", type=int, default=80, help="timed requests per setting")
    parser.add_argument("--warmup", type=int, default=8, help="untimed requests per setting")
    parser.add_argument("--tokens", type=int, default=32, help="LLM new tokens per answer")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per replica")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    args = parser.parse_args(argv)
    with serving():
        figures = measure(clients=args.clients, requests=args.requests, warmup=args.warmup,
                          tokens=args.tokens, threads=args.threads, paths=tuple(args.paths))
    write_results(args.out, args, {"benchmark": "batching", **figures})
    summary = ", ".join(f"{p} {f['ratios']['throughput']:.2f}x (batch {f['max_batch_size']})"
                        for p, f in figures["paths"].items())
    print(f"[batching] throughput batched / unbatched with {args.clients} clients: {summary}; "
          f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()

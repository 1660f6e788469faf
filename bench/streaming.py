"""R5: token streaming through Serve vs in-process: time to first token and inter-token gap.

The tiny LLM, greedy, ``--tokens`` new tokens per answer, three paths interleaved request by
request (sequential, one stream at a time):

- ``direct``: `LLMPipeline.stream` in this process;
- ``handle``: `deployments.llm.LLMChat.stream` through a streaming `DeploymentHandle`
  (``handle.options(stream=True)``) from this process to the replica;
- ``http``: ``POST /v1/chat`` with ``stream: true`` on genserve's real `Ingress` (auth, usage
  log, the SSE route of `deployments.routes.chat`), which streams from the same `LLMChat`.

Every path counts non-empty text deltas only (the SSE route drops empty ones). TTFT: request
sent → first delta; inter-token: the gaps between consecutive deltas, pooled over requests.
Ratios are each Serve path's p50 over the in-process p50. The tiny model decodes a token in
about a millisecond, so these ratios are an upper bound: what Serve adds per delta is a fixed
cost in ms (also reported), small next to a real model's tens of ms per token.

    .venv/bin/python -m bench.streaming            # ~1 min on an idle 2-core box
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.common import (
    KEY,
    TINY_DIR,
    cli,
    deployed,
    ratio,
    replica_options,
    serving,
    stats,
    torch_threads,
    write_results,
)

APP = "bench-streaming"
NAME = "bench-llm"  # the model name the ingress reports
PATHS = ("direct", "handle", "http")


def _stamps(deltas: Iterable[Any], started: float) -> list[float]:
    """Seconds since ``started`` at each non-empty text delta."""
    return [time.perf_counter() - started for d in deltas if isinstance(d, str) and d]


def _sse_texts(response) -> Iterable[str]:
    """The text deltas of genserve's native chat SSE stream, as they arrive."""
    for line in response.iter_lines():
        if line.startswith("event: error"):
            raise RuntimeError(f"stream failed: {line}")
        if line.startswith("event: done"):
            return
        if line.startswith("data: "):
            yield json.loads(line[6:]).get("text", "")


def _app(llm_dir: str, threads: int, state_dir: str):
    from deployments.ingress import Ingress
    from deployments.llm import LLMChat

    llm = LLMChat.options(ray_actor_options=replica_options(threads, 0.5)).bind(llm_dir)
    env = {"GENSERVE_API_KEY": KEY, "GENSERVE_STATE_DIR": state_dir}
    return Ingress.options(ray_actor_options=replica_options(1, **env)).bind(
        llm=llm, llm_name=NAME, database_url=f"sqlite:///{state_dir}/usage.db",
        files_location=f"{state_dir}/files")


def measure(url: str, *, n: int, warmup: int, tokens: int, threads: int) -> dict[str, Any]:
    import httpx
    from ray import serve

    from genserve import tiny
    from genserve.pipelines.llm import ChatParams, LLMPipeline

    llm_dir = str(tiny.build(TINY_DIR, roles=["llm"])["llm"])
    messages = [{"role": "user", "content": "tell me a story"}]
    params = ChatParams(messages, max_new_tokens=tokens, do_sample=False, seed=1)
    body = {"messages": messages, "max_new_tokens": tokens, "do_sample": False, "seed": 1,
            "stream": True}
    stamps: dict[str, list[list[float]]] = {p: [] for p in PATHS}
    with tempfile.TemporaryDirectory(prefix="genserve-bench-") as state_dir, \
            torch_threads(threads), httpx.Client(timeout=120) as client, \
            deployed(_app(llm_dir, threads, state_dir), APP, f"/{APP}"):
        pipeline = LLMPipeline(llm_dir)
        handle = serve.get_deployment_handle("LLMChat", app_name=APP).options(stream=True)

        def direct() -> list[float]:
            started = time.perf_counter()
            return _stamps(pipeline.stream(params), started)

        def via_handle() -> list[float]:
            started = time.perf_counter()
            return _stamps(handle.stream.remote(params), started)

        def via_http() -> list[float]:
            started = time.perf_counter()
            with client.stream("POST", f"{url}/{APP}/v1/chat", json=body,
                               headers={"Authorization": f"Key {KEY}"}) as r:
                if r.status_code != 200:
                    raise RuntimeError(f"/v1/chat answered {r.status_code}: {r.read()[:300]}")
                return _stamps(_sse_texts(r), started)

        calls = {"direct": direct, "handle": via_handle, "http": via_http}
        for i in range(warmup + n):
            for path, call in calls.items():
                got = call()
                if not got:
                    raise RuntimeError(f"{path}: the stream produced no text")
                if i >= warmup:
                    stamps[path].append(got)
    out: dict[str, Any] = {"paths": {p: _summarize(s) for p, s in stamps.items()}}
    d = out["paths"]["direct"]
    out["added_ms"] = {p: {"ttft_p50": round(f["ttft"]["p50_ms"] - d["ttft"]["p50_ms"], 2),
                           "inter_token_p50": round(f["inter_token"]["p50_ms"]
                                                    - d["inter_token"]["p50_ms"], 2)}
                       for p, f in out["paths"].items() if p != "direct"}
    out["ratios"] = {f"{p}_{k}_p50": ratio(out["paths"][p][k]["p50_ms"], d[k]["p50_ms"])
                     for p in ("handle", "http") for k in ("ttft", "inter_token")}
    return out


def _summarize(requests: list[list[float]]) -> dict[str, Any]:
    gaps = [b - a for s in requests for a, b in zip(s, s[1:])]
    return {"ttft": stats([s[0] for s in requests]),
            "inter_token": stats(gaps) if gaps else None,
            "total": stats([s[-1] for s in requests]),
            "deltas_per_request": round(statistics.fmean(len(s) for s in requests), 1)}


def headline(results: dict[str, Any]) -> list[tuple[str, float]]:
    p, r, added = results["paths"], results["ratios"], results["added_ms"]
    rows = []
    for path, label in (("http", "HTTP SSE"), ("handle", "streaming handle")):
        rows.append((f"{label}: TTFT p50 / in-process ({p[path]['ttft']['p50_ms']:.1f} vs "
                     f"{p['direct']['ttft']['p50_ms']:.1f} ms)", r[f"{path}_ttft_p50"]))
        rows.append((f"{label}: inter-token p50 / in-process (+"
                     f"{added[path]['inter_token_p50']:.2f} ms per delta on "
                     f"{p['direct']['inter_token']['p50_ms']:.2f} ms)",
                     r[f"{path}_inter_token_p50"]))
    return rows


def main(argv: list[str] | None = None) -> Path:
    parser = cli("streaming", __doc__)
    parser.add_argument("-n", type=int, default=30, help="timed streams per path")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per answer")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads, in-process and in the replica alike")
    args = parser.parse_args(argv)
    with serving() as url:
        figures = measure(url, n=args.n, warmup=args.warmup, tokens=args.tokens,
                          threads=args.threads)
    write_results(args.out, args, {"benchmark": "streaming", **figures})
    r = figures["ratios"]
    print(f"[streaming] vs in-process, p50: TTFT http {r['http_ttft_p50']:.2f}x / handle "
          f"{r['handle_ttft_p50']:.2f}x, inter-token http {r['http_inter_token_p50']:.2f}x / "
          f"handle {r['handle_inter_token_p50']:.2f}x; wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()

"""Every benchmark in one run, one Ray cluster: R1–R6 and R9 (and the job queue's).

Starts one local Ray (logical CPUs and GPUs sized from ``serve_config.yaml``, so the YAML's
fractional GPU placement works for the benches that deploy it) and one Serve HTTP proxy on a
free loopback port with the YAML's HTTP options; then runs each bench's ``main`` in turn (they
find the running cluster and Serve, deploy their own apps and delete them), writes each
bench's ``bench/results/<name>.json``, then ``bench/results/summary.json`` and prints a
markdown table: benchmark, figure, ratio.

Sample counts: the default profile keeps ``make bench`` under 10 minutes on a 2-core box;
``--quick`` is a smoke run (a few minutes, noisy figures); ``--full`` uses each bench's own
defaults (not timed: lora_cache, queue and train_overhead alone take ~8 minutes at theirs).

    .venv/bin/python -m bench.run_all                 # or: make bench
    .venv/bin/python -m bench.run_all --quick --only serve_overhead streaming
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import KEY, RESULTS_DIR, free_port

SUMMARY = RESULTS_DIR / "summary.json"
# (id, module, default-profile args, --quick args); --full passes no args (the bench's own).
BENCHES: list[tuple[str, str, list[str], list[str]]] = [
    ("R1", "serve_overhead", ["-n", "40"], ["-n", "8", "--warmup", "2"]),
    ("R2", "handle_hops", ["-n", "40"], ["-n", "8", "--warmup", "2", "--no-real"]),
    ("R3", "fastapi_vs_serve", ["--requests", "32"], ["--requests", "8", "--warmup", "2"]),
    ("R4", "batching", ["--requests", "64"], ["--requests", "16", "--warmup", "4"]),
    ("R5", "streaming", ["-n", "30"], ["-n", "8", "--warmup", "2"]),
    ("R6", "lora_cache", ["--hits", "3"], ["--loras", "3", "--cache", "2", "--hits", "1"]),
    ("", "queue", ["-n", "10", "--burst", "40", "--concurrency", "8"],
     ["-n", "3", "--burst", "8", "--concurrency", "4"]),
    # 30 steps: ray-1 reports at 10, 20, 30, two timed intervals past the warm-up. The naive
    # report-every-step mode at a 0.5 s controller poll (Ray's default 2 s: --full) shows
    # the pacing without spending a minute on it.
    ("R9", "train_overhead", ["--steps", "30", "--workers", "1", "--poll", "0.5"],
     ["--steps", "24", "--warmup", "2", "--workers", "1", "--poll"]),
]


def start_cluster() -> str:
    """One Ray and one Serve proxy for every bench; returns the proxy's base URL."""
    import ray
    from ray import serve

    from genserve import launch

    config = launch.load_config()
    need = launch.required_resources(config)
    # Logical CPUs: every YAML deployment's minimum plus a Ray Train worker group (R9).
    ray.init(num_cpus=need["CPU"] + 3, num_gpus=need["GPU"], include_dashboard=False,
             log_to_driver=False,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    port = free_port()
    http = {**config["http_options"], "host": "127.0.0.1", "port": port,
            "ssl_keyfile": None, "ssl_certfile": None}
    serve.start(http_options=http)
    return f"http://127.0.0.1:{port}"


def run_one(module: str, argv: list[str]) -> dict[str, Any]:
    bench = importlib.import_module(f"bench.{module}")
    started = time.perf_counter()
    try:
        out = bench.main(argv)
        results = json.loads(Path(out).read_text())
        rows = [{"figure": f, "ratio": round(r, 3)} for f, r in bench.headline(results)]
        return {"results": str(out), "rows": rows,
                "seconds": round(time.perf_counter() - started, 1)}
    except Exception as exc:  # noqa: BLE001 - one failing bench must not hide the others
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}",
                "seconds": round(time.perf_counter() - started, 1)}


def table(benches: dict[str, dict[str, Any]]) -> str:
    lines = ["| benchmark | figure | ratio |", "|---|---|---|"]
    for name, b in benches.items():
        if "error" in b:
            lines.append(f"| {name} | FAILED: {b['error'][:120]} | |")
        for row in b.get("rows", []):
            lines.append(f"| {name} | {row['figure']} | {row['ratio']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    profile = parser.add_mutually_exclusive_group()
    profile.add_argument("--quick", action="store_true", help="smoke-run sample counts")
    profile.add_argument("--full", action="store_true", help="each bench's own defaults")
    names = [m for _, m, _, _ in BENCHES]
    parser.add_argument("--only", nargs="+", choices=names, help="run just these")
    parser.add_argument("--skip", nargs="+", choices=names, default=[], help="leave these out")
    parser.add_argument("--out", type=Path, default=SUMMARY)
    args = parser.parse_args(argv)
    import ray
    from ray import serve

    started = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]
    benches: dict[str, dict[str, Any]] = {}
    # Replicas inherit the driver's environment on a local cluster: the ingresses' API key,
    # and a state directory for whatever a deployment keeps on disk.
    os.environ["GENSERVE_API_KEY"] = KEY
    with tempfile.TemporaryDirectory(prefix="genserve-bench-all-") as state:
        os.environ["GENSERVE_STATE_DIR"] = state
        url = start_cluster()
        try:
            for rid, module, default, quick in BENCHES:
                if module in args.skip or (args.only and module not in args.only):
                    continue
                argv_b = [] if args.full else quick if args.quick else default
                print(f"[run_all] {rid or '-'} {module} {' '.join(argv_b)}", flush=True)
                benches[f"{rid} {module}".strip()] = {"args": argv_b,
                                                      **run_one(module, argv_b)}
        finally:
            serve.shutdown()
            ray.shutdown()
    total = round(time.perf_counter() - started, 1)
    summary = {"created": datetime.now(UTC).isoformat(timespec="seconds"),
               "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version(), "ray": ray.__version__,
                           "load_avg_start": load_start,
                           "load_avg_end": [round(x, 2) for x in os.getloadavg()]},
               "profile": "full" if args.full else "quick" if args.quick else "default",
               "serve_url": url, "total_s": total, "benches": benches}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(table(benches))
    print(f"[run_all] {len(benches)} benches in {total:.0f} s; wrote {args.out}")
    return 1 if any("error" in b for b in benches.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What Ray Train costs per personalization step.

One tiny job (tiny SDXL, 64 px, batch 2, no prior preservation) timed side by side:

- ``plain``: `training.loop.Run` stepped in a Python loop, no Ray;
- ``ray-N``: the same config through `training.personalize.build_trainer` with N CPU workers
  (N = 2 is DDP over gloo), optionally with a shorter Ray Train controller poll interval
  (``ray-N-poll0.1s``).

A step's time is the wall-clock interval between the ends of consecutive steps: in Ray modes
the loop's per-step ``time`` metric, which includes ``ray.train.report``; in plain mode the same
clock read at the same place. Warm-up steps are dropped; median and p90 are reported, with
the ratio to plain. ``--threads`` torch threads are split evenly over the workers of a mode,
so every mode uses the same cores.

    .venv/bin/python -m bench.train_overhead      # ~4 min on an idle 2-core box
    .venv/bin/python -m bench.train_overhead --steps 20 --workers 1 --poll default
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from ray.train import UserCallback

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "train_overhead.json"
# The tests' tiny-model directory (tests/conftest.py TINY_DIR), so one build serves both.
TINY_DIR = Path(os.environ.get("GENSERVE_TINY_DIR", ROOT / ".cache" / "tiny-models"))
SUBJECT_IMAGES = 6   # as tests/test_personalize_train.py; batch 2 cycles through them
GOAL_RATIO = 1.10    # target for ray-1's median step over plain's
# The schema's maximum: no periodic checkpoint, only the final one (written after the last
# timed step, so it costs nothing here).
CHECKPOINT_EVERY = 10_000
# Ray Train v2 keeps one pending report per worker (a queue of size 1) and its controller
# takes at most one per poll, every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default): a
# loop that reports every step cannot go faster than one step per poll. Ray copies this
# variable from the driver to the controller, so setting it around `fit()` is enough.
POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


@dataclass(frozen=True)
class Mode:
    name: str
    ray: bool
    workers: int
    threads: int           # torch intra-op threads per worker
    poll_s: float | None   # controller poll interval; None keeps Ray's (or the env's)
    report_every: int = 1  # ray.report_every_n_steps


@dataclass
class Timings:
    """One mode's raw clock readings, one entry per reported step (rank 0 in Ray modes)."""

    steps: list[int]       # the step numbers (1-based) the stamps belong to
    stamps: list[float]    # time.time() after each of those steps
    compute: list[float]   # Run.step's own duration ("step_seconds"): no reporting
    started: float         # time.time() before the models were loaded
    finished: float        # time.time() once the mode returned (Ray: fit() incl. export)


# -- the two ways of running the job ---------------------------------------------------------

def time_plain(cfg: dict[str, Any], data, threads: int) -> Timings:
    import torch

    from training.loop import Run

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # a Ray worker gets this from OMP_NUM_THREADS (its CPUs)
    try:
        started = time.time()
        run = Run(cfg, data, torch.device("cpu"), 0, 1)
        stamps, compute = [], []
        for step in range(run.plan.total_steps):
            metrics = run.step(step)
            stamps.append(time.time())  # where train_loop_per_worker reads its `time`
            compute.append(metrics["step_seconds"])
        return Timings(list(range(1, len(stamps) + 1)), stamps, compute, started, time.time())
    finally:
        torch.set_num_threads(previous)  # in-process callers (tests) keep their setting


class _Collector:
    """A zero-CPU actor holding rank 0's reports: the callback runs in the Train controller,
    not in this process."""

    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []

    def add(self, report: dict[str, Any]) -> None:
        self.reports.append(report)

    def get(self) -> list[dict[str, Any]]:
        return self.reports


class StepReports(UserCallback):
    """Forwards every step's rank-0 metrics to a `_Collector` (fire and forget, so the
    controller is not slowed down by the bench)."""

    def __init__(self, collector) -> None:
        self.collector = collector

    def after_report(self, run_context, metrics, checkpoint) -> None:
        rank0 = metrics[0]  # metrics[i] is worker i's report
        self.collector.add.remote({k: rank0[k] for k in ("step", "time", "step_seconds")})


def time_ray(cfg: dict[str, Any], data, job_id: str, poll_s: float | None) -> Timings:
    """``cfg["ray"]["report_every_n_steps"]`` decides which steps report (and are stamped)."""
    import ray

    from training.personalize import build_trainer

    collector = ray.remote(num_cpus=0)(_Collector).remote()
    trainer = build_trainer(cfg, data, job_id)
    # build_trainer's RunConfig unchanged plus one observer; Ray reads callbacks at fit().
    trainer.run_config.callbacks.append(StepReports(collector))
    started = time.time()
    with _env(POLL_ENV, None if poll_s is None else str(poll_s)):
        trainer.fit()
    finished = time.time()
    reports = sorted(ray.get(collector.get.remote()), key=lambda r: r["step"])
    ray.kill(collector)
    steps = [r["step"] for r in reports]
    every = cfg["ray"]["report_every_n_steps"]
    expected = sorted({*range(every, cfg["max_train_steps"] + 1, every), cfg["max_train_steps"]})
    if steps != expected:
        raise RuntimeError(f"{job_id}: expected reports for steps {expected}, got {steps}")
    return Timings(steps, [r["time"] for r in reports], [r["step_seconds"] for r in reports],
                   started, finished)


@contextlib.contextmanager
def _env(name: str, value: str | None) -> Iterator[None]:
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


@contextlib.contextmanager
def ray_session(cpus: int) -> Iterator[None]:
    """Use the connected Ray when there is one (the test session's cluster), else start a
    local one for this run and stop it afterwards."""
    import ray

    if ray.is_initialized():
        free = ray.available_resources().get("CPU", 0)
        if free < cpus:
            raise RuntimeError(f"the connected Ray cluster has {free} free CPUs; the Ray modes "
                               f"need {cpus} (workers x threads)")
        yield
        return
    # Worker logs stay in Ray's log files (a line per step per mode otherwise); a worker's
    # error still reaches us through fit().
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    try:
        yield
    finally:
        ray.shutdown()


# -- the job ---------------------------------------------------------------------------------

def job_config(models: dict[str, Path], *, steps: int, resolution: int, batch: int,
               workers: int, threads: int, storage: str, report_every: int = 1
               ) -> dict[str, Any]:
    from genserve.schemas.personalize import PersonalizeRequest

    request = PersonalizeRequest(
        images_data_url="/unused.zip",  # the data is built here, not fetched
        photo_class="Man", model_url=str(models["sdxl-base"]), vae_url=str(models["sdxl-vae"]),
        resolution_width=resolution, resolution_height=resolution, batch_size=batch,
        max_train_steps=steps, with_prior_preservation=False, random_rotation_start=0,
        random_rotation_end=0,
        # CPU = threads: Ray sets a worker's OMP_NUM_THREADS to its CPU count. No retries:
        # a restarted worker would time its model loading as steps.
        ray={"num_workers": workers, "use_gpu": False, "resources_per_worker": {"CPU": threads},
             "storage_path": storage, "max_failures": 0,
             "checkpoint_every_n_steps": CHECKPOINT_EVERY,
             "report_every_n_steps": report_every})
    return request.to_config()


def subject_data(size: int):
    from tests.subjects import subject_image
    from training.prepare import PreparedData

    n = SUBJECT_IMAGES
    return PreparedData(pixels=np.stack([np.asarray(subject_image(i, size)) for i in range(n)]),
                        captions=["a photo of <s0><s1>"] * n, original_sizes=[(size, size)] * n,
                        crops=[(0, 0)] * n, masks=np.ones((n, size // 8, size // 8), np.float32),
                        file_names=[f"{i}.png" for i in range(n)])


# -- figures ---------------------------------------------------------------------------------

def summarize(mode: Mode, t: Timings, *, warmup: int, batch: int) -> dict[str, Any]:
    # Per-step time between consecutive reports (reports may be every N steps); only
    # intervals that start at or after the warm-up.
    numbers, stamps = np.asarray(t.steps), np.asarray(t.stamps)
    keep = numbers[:-1] >= max(warmup, 1)
    steps = (np.diff(stamps) / np.diff(numbers))[keep]
    compute = np.asarray(t.compute)[numbers > warmup]
    median = float(np.median(steps))
    return {
        "workers": mode.workers, "threads_per_worker": mode.threads, "ray": mode.ray,
        "poll_interval_s": mode.poll_s, "steps_timed": len(steps),
        "median_s": round(median, 4), "p90_s": round(float(np.percentile(steps, 90)), 4),
        "mean_s": round(float(steps.mean()), 4), "min_s": round(float(steps.min()), 4),
        "max_s": round(float(steps.max()), 4),
        # Run.step alone: tells "Ray slows the compute" from "Ray makes the loop wait".
        "compute_median_s": round(float(np.median(compute)), 4),
        "images_per_s": round(mode.workers * batch / median, 3),
        "startup_s": round(t.stamps[0] - t.started, 2),  # model loading + step 0 (+ Ray start)
        "total_s": round(t.finished - t.started, 2),
        "step_s": [round(float(s), 4) for s in steps],
    }


def ratios(modes: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    plain = modes["plain"]
    return {name: {"step_time": round(m["median_s"] / plain["median_s"], 3),
                   "throughput": round(m["images_per_s"] / plain["images_per_s"], 3)}
            for name, m in modes.items() if name != "plain"}


def machine() -> dict[str, Any]:
    import diffusers
    import ray
    import torch

    return {"cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "ray": ray.__version__, "diffusers": diffusers.__version__,
            "load_avg_start": [round(x, 2) for x in os.getloadavg()]}


def print_table(results: dict[str, Any]) -> None:
    rows = [("mode", "median s", "p90 s", "compute s", "img/s", "step x", "img/s x")]
    for name, m in results["modes"].items():
        r = results["ratios"].get(name, {"step_time": 1.0, "throughput": 1.0})
        rows.append((name, f"{m['median_s']:.3f}", f"{m['p90_s']:.3f}",
                     f"{m['compute_median_s']:.3f}", f"{m['images_per_s']:.2f}",
                     f"{r['step_time']:.2f}", f"{r['throughput']:.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


def headline(results: dict[str, Any]) -> list[tuple[str, float]]:
    """(figure, ratio) rows for `bench.run_all`'s table: each Ray mode's median step / plain."""
    plain = results["modes"]["plain"]["median_s"] * 1000
    return [(f"{name}: median step / plain loop ({results['modes'][name]['median_s'] * 1000:.0f}"
             f" vs {plain:.0f} ms)", r["step_time"]) for name, r in results["ratios"].items()]


# -- entry point -----------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.train_overhead",
                                     description="Per-step cost of Ray Train vs a plain loop.")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per mode")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of stats")
    parser.add_argument("--resolution", type=int, default=64, help="image side, pixels")
    parser.add_argument("--batch-size", type=int, default=2, help="images per step per worker")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="Ray worker counts to time")
    parser.add_argument("--poll", nargs="*", default=["default"],
                        help="extra Ray modes reporting every step, one per controller poll "
                        "interval (s); 'default' keeps Ray's 2 s")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads per mode, split over its workers")
    parser.add_argument("--models-dir", type=Path, default=TINY_DIR)
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    if args.steps < args.warmup + 2:
        parser.error(f"--steps must exceed --warmup by at least 2 (to time two steps), but "
                     f"they are {args.steps} and {args.warmup}")
    if args.resolution % 8:
        parser.error(f"--resolution must be divisible by 8 but is {args.resolution}")
    bad = [w for w in args.workers if w < 1 or w > args.threads]
    if bad:
        parser.error(f"--workers must be between 1 and --threads ({args.threads}), got {bad}")
    try:
        args.poll = [None if p == "default" else float(p) for p in args.poll]
    except ValueError:
        parser.error(f"--poll takes seconds or 'default', got {args.poll}")
    return args


def modes_for(args: argparse.Namespace) -> list[Mode]:
    """plain; per worker count ``ray-N``: the job's own settings (report every
    `report_every_n_steps`, controller poll `CONTROLLER_POLL_S`), and with ``--poll`` extra
    variants that report every step at the given poll intervals, for comparison."""
    from genserve.schemas.personalize import RayOptions
    from training.personalize import CONTROLLER_POLL_S

    every = RayOptions.model_fields["report_every_n_steps"].default
    out = [Mode("plain", False, 1, args.threads, None)]
    for workers in args.workers:
        threads = max(1, args.threads // workers)
        out.append(Mode(f"ray-{workers}", True, workers, threads, CONTROLLER_POLL_S, every))
        for poll in args.poll:
            name = f"ray-{workers}-report-every-step" + ("" if poll is None
                                                         else f"-poll{poll:g}s")
            out.append(Mode(name, True, workers, threads, poll, 1))
    return out


def main(argv: list[str] | None = None) -> Path:
    """Run every mode, write the JSON results and print a table; returns the JSON's path."""
    from ray.train.v2._internal.constants import DEFAULT_HEALTH_CHECK_INTERVAL_S

    from genserve import tiny

    args = parse_args(argv)
    models = tiny.build(args.models_dir.resolve(), roles=["sdxl-base", "sdxl-vae"])
    data = subject_data(args.resolution)
    modes = modes_for(args)
    info = machine()
    stats: dict[str, dict[str, Any]] = {}
    ray_cpus = max(m.workers * m.threads for m in modes if m.ray)
    with tempfile.TemporaryDirectory(prefix="genserve-bench-") as storage, \
            ray_session(ray_cpus):
        for mode in modes:
            cfg = job_config(models, steps=args.steps, resolution=args.resolution,
                             batch=args.batch_size, workers=mode.workers, threads=mode.threads,
                             storage=storage, report_every=mode.report_every)
            print(f"[train_overhead] {mode.name}: {args.steps} steps", flush=True)
            timings = (time_ray(cfg, data, f"bench-{mode.name}", mode.poll_s) if mode.ray
                       else time_plain(cfg, data, mode.threads))
            stats[mode.name] = summarize(mode, timings, warmup=args.warmup,
                                         batch=args.batch_size)
    info["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    rel = ratios(stats)
    one = rel.get("ray-1", {}).get("step_time")
    results = {
        "benchmark": "train_overhead",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": info,
        "config": {"steps": args.steps, "warmup": args.warmup, "resolution": args.resolution,
                   "batch_size": args.batch_size, "threads": args.threads,
                   "subject_images": SUBJECT_IMAGES, "prior_preservation": False,
                   "checkpoint_every_n_steps": CHECKPOINT_EVERY,
                   "ray_default_poll_interval_s": float(os.environ.get(
                       POLL_ENV, DEFAULT_HEALTH_CHECK_INTERVAL_S))},
        "modes": stats,
        "ratios": rel,
        "goal": {"ray-1 step_time max": GOAL_RATIO, "ray-1 step_time": one,
                 "met": None if one is None else one <= GOAL_RATIO},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print_table(results)
    print(f"[train_overhead] wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()

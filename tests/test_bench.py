"""The benchmarks run end to end at tiny settings and write the figures they promise. The
figures themselves are not checked: they depend on the box and on what else it runs."""

from __future__ import annotations

import json

from bench import train_overhead


def test_train_overhead_times_plain_and_ray_steps(ray_cluster, tmp_path):
    # The job's own settings (report every 10 steps, 0.25 s controller poll): 24 steps give
    # reports at 10, 20, 24, so two timed intervals after the warm-up. One thread: the
    # session cluster keeps 3 logical CPUs for Train.
    out = train_overhead.main(["--steps", "24", "--warmup", "2", "--workers", "1", "--poll",
                               "--threads", "1", "--out", str(tmp_path / "train.json")])
    results = json.loads(out.read_text())
    assert {"machine", "config", "modes", "ratios", "goal"} <= set(results)
    assert results["machine"]["cpu_count"] >= 1
    assert results["config"]["steps"] == 24
    assert list(results["modes"]) == ["plain", "ray-1"]
    assert results["modes"]["plain"]["steps_timed"] == 22  # intervals starting at steps 2..23
    assert results["modes"]["ray-1"]["steps_timed"] == 2   # 10→20 and 20→24
    for name, mode in results["modes"].items():
        assert min(mode["step_s"]) > 0, name
        for key in ("median_s", "p90_s", "compute_median_s", "images_per_s", "startup_s"):
            assert mode[key] > 0, (name, key)
    assert results["modes"]["ray-1"]["ray"] is True
    ratio = results["ratios"]["ray-1"]
    assert ratio["step_time"] > 0 and ratio["throughput"] > 0
    assert results["goal"]["ray-1 step_time"] == ratio["step_time"]


def test_lora_cache_times_none_miss_hit_and_churn(app_url, lora_dir):
    """Against the session app (its SDXL replicas keep 3 LoRAs, see conftest): the bench's
    phases run and produce figures; deploying its own app here would replace the session's."""
    from bench import lora_cache
    from tests.conftest import API_KEY

    ids = lora_cache.write_loras(lora_dir, 4, prefix="bench-smoke")
    figures = lora_cache.measure(app_url, ids, cache=3, hits=1, size=64, steps=2, key=API_KEY)
    assert figures["miss"]["n"] == 3 and figures["hit"]["n"] == 3 and figures["churn"]["n"] == 8
    for phase in ("none", "miss", "hit", "churn"):
        assert figures[phase]["median_ms"] > 0, phase
    assert set(figures["ratios"]) == {"miss", "hit", "churn", "miss_over_hit"}


def test_queue_bench_direct_vs_queued_and_burst(app_url):
    """The queue bench's phases against the session app (tiny settings)."""
    from bench import queue
    from tests.conftest import API_KEY

    figures = queue.measure(app_url, n=3, burst=8, concurrency=4, key=API_KEY)
    for phase in ("direct", "queued", "submit"):
        assert figures[phase]["n"] == 3 and figures[phase]["p50_ms"] > 0, phase
    assert figures["burst"]["distinct_ids"] == 8
    assert figures["ratios"]["queued_over_direct_p50"] > 0

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


# -- R1–R5 and run_all: each bench's main at tiny settings, on the session cluster ------------
# Their main() finds the running Ray and Serve (the session app's TLS proxy) and deploys apps
# of their own ("bench-…" names and route prefixes) next to "genserve", deleting them after.

def _run_bench(module, args: list[str], tmp_path) -> dict:
    from ray import serve

    before = set(serve.status().applications)
    out = module.main([*args, "--out", str(tmp_path / "out.json")])
    results = json.loads(out.read_text())
    assert {"machine", "config", "benchmark", "ratios"} <= set(results)
    assert results["machine"]["cpu_count"] >= 1
    assert set(serve.status().applications) == before  # its own apps are gone
    rows = module.headline(results)
    assert rows and all(isinstance(f, str) and isinstance(r, float) for f, r in rows)
    return results


def _shape(figures: dict) -> None:
    assert figures["n"] >= 1 and figures["p50_ms"] > 0 and figures["p99_ms"] >= figures["p50_ms"]


def test_serve_overhead_compares_http_and_handle_with_in_process(app_url, tmp_path):
    from bench import serve_overhead

    results = _run_bench(serve_overhead, ["-n", "2", "--warmup", "1", "--models", "sdxl",
                                          "sleep", "--work-ms", "20"], tmp_path)
    assert list(results["models"]) == ["sdxl", "sleep"]
    for figures in results["models"].values():
        for path in ("direct", "handle", "http"):
            _shape(figures[path])
        assert {"http_p50_frac", "http_p99_frac", "handle_p50_ms"} <= set(figures["overhead"])
    assert "sdxl_http_p50_frac" in results["ratios"]


def test_handle_hops_times_fused_one_and_chain(app_url, tmp_path):
    from bench import handle_hops

    results = _run_bench(handle_hops, ["-n", "2", "--warmup", "1", "--no-real",
                                       "--stage-ms", "10", "--payload-kb", "16"], tmp_path)
    assert list(results["layouts"]) == ["fused", "one", "chain"]
    for figures in results["layouts"].values():
        _shape(figures)
    assert set(results["hop_ms"]) == {"p50", "p99"}
    assert "hop_p50_frac_of_work" in results["ratios"]


def test_fastapi_vs_serve_loads_both_servers(app_url, tmp_path):
    from bench import fastapi_vs_serve

    results = _run_bench(fastapi_vs_serve, ["--requests", "2", "--warmup", "1",
                                            "--concurrency", "1", "2"], tmp_path)
    assert list(results["levels"]) == ["1", "2"]
    for level in results["levels"].values():
        for server in ("plain", "serve"):
            _shape(level[server])
            assert level[server]["throughput_rps"] > 0
        assert set(level["ratios"]) == {"throughput_serve_over_plain", "p50_serve_over_plain",
                                        "p99_serve_over_plain"}


def test_batching_reconfigures_the_llm_from_batch_1_to_n(app_url, tmp_path):
    from bench import batching

    results = _run_bench(batching, ["--requests", "4", "--warmup", "2", "--clients", "2",
                                    "--tokens", "4", "--paths", "llm"], tmp_path)
    llm = results["paths"]["llm"]
    _shape(llm["batch_1"])
    _shape(llm["batch_8"])
    assert llm["batch_1"]["batch_size_mean"] == 1.0  # the knob took effect
    assert set(llm["ratios"]) == {"throughput", "p50", "p99"}


def test_streaming_times_first_token_and_gaps_on_three_paths(app_url, tmp_path):
    from bench import streaming

    results = _run_bench(streaming, ["-n", "2", "--warmup", "1", "--tokens", "8"], tmp_path)
    assert list(results["paths"]) == ["direct", "handle", "http"]
    for figures in results["paths"].values():
        _shape(figures["ttft"])
        assert figures["deltas_per_request"] >= 1
    assert set(results["ratios"]) == {f"{p}_{k}_p50" for p in ("handle", "http")
                                      for k in ("ttft", "inter_token")}


def test_run_all_lists_every_bench_and_prints_a_table():
    """run_all starts its own cluster, so here only its parts: every listed module has the
    entry points it calls, and the table renders figures and failures."""
    import importlib

    from bench import run_all

    for _, module, _, _ in run_all.BENCHES:
        bench = importlib.import_module(f"bench.{module}")
        assert callable(bench.main) and callable(bench.headline), module
    text = run_all.table({"R1 x": {"rows": [{"figure": "f", "ratio": 1.234}]},
                          "R2 y": {"error": "RuntimeError: boom"}})
    assert text.splitlines()[:2] == ["| benchmark | figure | ratio |", "|---|---|---|"]
    assert "| R1 x | f | 1.23 |" in text and "FAILED: RuntimeError: boom" in text

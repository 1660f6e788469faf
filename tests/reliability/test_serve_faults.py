"""Serve-level faults and load held (RELIABILITY.md F2, F3, F6, F7, L1, L4) on the production
ingress over a fault-injectable SDXL base (`faulty.py`), in this package's own cluster with
short timers. Each case checks the outcome (every request's status, replicas replaced, the
figures), not only that the processes survived; the figures are printed for the notes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import API_KEY
from tests.reliability.conftest import REQUEST_TIMEOUT_S
from tests.reliability.faulty import graph
from tests.traffic import Traffic
from tests.util import tiny_request


APP = "rel"
FIGURES: dict = {}


def _until(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{what}: not after {timeout_s}s")
        time.sleep(0.1)
    return time.monotonic() - started


def _status(app: str) -> str:
    from ray import serve

    apps = serve.status().applications
    return apps[app].status if app in apps else "NOT_STARTED"


def _replica_ids(app: str, deployment: str = "SDXLBase") -> set[str]:
    """Ids of the RUNNING replicas (the controller's view)."""
    import ray

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return {a["name"][len(prefix):] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(prefix)}


def _running(app: str, deployment: str = "SDXLBase") -> int:
    from ray import serve

    dep = serve.status().applications[app].deployments[deployment]
    return dep.replica_states.get("RUNNING", 0)


def _deploy(app, name: str = APP, prefix: str = "/", wait: bool = True) -> None:
    from ray import serve

    # serve.run waits for RUNNING (and raises on DEPLOY_FAILED); these cases watch the rollout.
    serve._run(app, _blocking=False, name=name, route_prefix=prefix)
    if wait:
        _until(lambda: _status(name) == "RUNNING", 180, f"{name} RUNNING")


def _record(case: str, **figures) -> None:
    FIGURES[case] = figures
    print(f"\n{case}: {json.dumps(figures, default=str)}")


@pytest.fixture(scope="module")
def models(tiny_models):
    return tiny_models


@pytest.fixture(scope="module")
def faults(fault_state):
    path = fault_state / "faults"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module")
def base_app(serve_url, models, faults, fault_state):
    _deploy(graph(models, faults, fault_state, replicas=2))
    _warm(serve_url)
    return serve_url


def _warm(url: str, path: str = "/generate", timeout_s: float = 30) -> None:
    """Until a request is served: the proxies learn a new route a moment after RUNNING."""
    last = None
    with httpx.Client(base_url=url, timeout=60,
                      headers={"Authorization": f"Key {API_KEY}"}) as c:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            last = c.post(path, json=tiny_request())
            if last.status_code == 200:
                return
            time.sleep(0.5)
    raise AssertionError(f"{path} not served: {last.status_code} {last.text[:300]}")


def test_f2_failing_health_check_restarts_that_replica(base_app, faults):
    before = _replica_ids(APP)
    assert len(before) == 2
    sick = sorted(before)[0]
    with Traffic(base_app, clients=2) as traffic:
        traffic.wait_served(traffic.ok + 2)
        flagged = time.monotonic()
        (faults / f"unhealthy-{sick}").touch()
        gone_s = _until(lambda: sick not in _replica_ids(APP), 30, "unhealthy replica stopped")
        served_while_down = traffic.ok
        replaced_s = _until(lambda: len(_replica_ids(APP)) == 2 and _running(APP) == 2, 60,
                            "replacement running")
        served_while_down = traffic.ok - served_while_down
        time.sleep(1)
    (faults / f"unhealthy-{sick}").unlink()
    after = _replica_ids(APP)
    _record("F2 check_health fails", requests=traffic.sent, served=traffic.ok,
            gave_up=traffic.gave_up, first_attempts_failed=traffic.first_try_failed,
            stopped_after_s=round(gone_s, 1), replaced_after_s=round(gone_s + replaced_s, 1),
            served_meanwhile=served_while_down)
    assert sick not in after and len(after) == 2 and (before - {sick}) <= after
    assert traffic.gave_up == 0, traffic.failures[-5:]
    assert served_while_down > 0  # the healthy replica kept serving
    assert time.monotonic() - flagged < 90


def _post_many(url: str, n: int, body: dict) -> list[tuple[int, float]]:
    """``n`` concurrent POST /generate: (status, seconds) each."""
    from concurrent.futures import ThreadPoolExecutor

    def one(_):
        with httpx.Client(base_url=url, timeout=60,
                          headers={"Authorization": f"Key {API_KEY}"}) as c:
            t0 = time.monotonic()
            return c.post("/generate", json=body).status_code, time.monotonic() - t0

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_f3_stuck_handler_gets_408_and_is_cancelled(base_app, faults):
    from concurrent.futures import ThreadPoolExecutor

    stuck_body = tiny_request(prompt="stuck")
    (faults / "slow").write_text("60")
    try:
        # Two stuck requests hold two of the four replica slots; other traffic goes on.
        with Traffic(base_app, clients=1, retry=False) as others:
            with ThreadPoolExecutor(1) as pool:
                first = pool.submit(_post_many, base_app, 2, stuck_body).result()
        # Four stuck requests take every slot: unless the timeout cancelled them on the
        # replicas, the next request would wait behind a 60 s sleep.
        second = _post_many(base_app, 4, stuck_body)
        (next_status, next_s), = _post_many(base_app, 1, tiny_request())
    finally:
        (faults / "slow").unlink()
    stuck = first + second
    _record("F3 handler past request_timeout_s", request_timeout_s=REQUEST_TIMEOUT_S,
            stuck=[(code, round(t, 1)) for code, t in stuck], others=others.statuses(),
            next_request=[next_status, round(next_s, 2)])
    assert {code for code, _ in stuck} == {408}, stuck
    assert all(REQUEST_TIMEOUT_S - 0.5 < t < REQUEST_TIMEOUT_S + 5 for _, t in stuck)
    assert set(others.statuses()) == {200}, others.statuses()  # others served meanwhile
    assert next_status == 200 and next_s < REQUEST_TIMEOUT_S


def _process_rss(app: str) -> int:
    """Resident memory of the app's replica processes (Ray titles them by deployment)."""
    import psutil

    total = 0
    for proc in psutil.process_iter(["cmdline"]):
        if any(f"ServeReplica:{app}:" in part for part in proc.info["cmdline"] or ()):
            total += proc.memory_info().rss
    return total


def _alone(url: str, n: int = 20) -> list[float]:
    """Latencies of ``n`` requests sent one at a time, nothing else in flight."""
    latencies = []
    with httpx.Client(base_url=url, timeout=60,
                      headers={"Authorization": f"Key {API_KEY}"}) as c:
        for _ in range(n):
            t0 = time.monotonic()
            assert c.post("/generate", json=tiny_request(num_inference_steps=2)).status_code == 200
            latencies.append(time.monotonic() - t0)
    return latencies


# RELIABILITY.md's 60 s in every run; the 10-minute soak with `pytest -m slow tests/reliability`.
@pytest.mark.parametrize("soak_s", [
    60, pytest.param(600, marks=[pytest.mark.slow, pytest.mark.timeout(900)])])
def test_l1_steady_load_at_80_percent_of_capacity(base_app, soak_s):
    before = _alone(base_app)
    with Traffic(base_app, clients=4, retry=False) as probe:
        time.sleep(8)
    capacity = probe.ok / 8
    rss_start = _process_rss(APP)
    rate = 0.8 * capacity
    with Traffic(base_app, clients=4, retry=False, rate_per_s=rate) as steady:
        time.sleep(soak_s)
    rss_end = _process_rss(APP)
    # A single request's latency on this box, sampled before and after the soak (a shared
    # 2-core VM has slow spells of seconds; one short sample before would miss them): the
    # p90 of the 40, since the median of so few is at the mercy of the cores' other work.
    single = sorted(before + _alone(base_app))
    single_s = single[int(0.9 * len(single))]
    p50, p99 = steady.latency(0.5), steady.latency(0.99)
    growth = rss_end / rss_start - 1
    _record("L1 steady 80 %", duration_s=soak_s, single_request_p90_s=round(single_s, 3),
            single_request_p50_s=round(single[len(single) // 2], 3),
            capacity_rps=round(capacity, 1), offered_rps=round(rate, 1),
            served_rps=round(steady.ok / soak_s, 1), requests=steady.sent,
            statuses=steady.statuses(), p50_s=round(p50, 3), p99_s=round(p99, 3),
            p99_over_single=round(p99 / single_s, 2), rss_mb=[rss_start >> 20, rss_end >> 20],
            rss_growth=round(growth, 3))
    assert steady.statuses() == {200: steady.sent}
    assert p99 <= 3 * single_s
    assert growth < 0.10


def test_f7_redeploy_under_load_has_no_5xx(base_app, models, faults, fault_state):
    """A new version of the app (a changed argument: Serve restarts every deployment of it)
    rolled out under traffic. Serve stops an old replica before its replacement is up, so a
    deployment with one replica has a gap; two replicas of each keep the path served
    throughout."""
    # Two replicas of every deployment on the path: what zero-downtime redeploys need.
    _deploy(graph(models, faults, fault_state, replicas=2, others=2, version="v1-ha"))
    _warm(base_app)
    before = {d: _replica_ids(APP, d) for d in ("Ingress", "SDXLBase", "SafetyChecker")}
    with Traffic(base_app, clients=2, retry=False) as traffic:
        traffic.wait_served(traffic.ok + 2)
        started = time.monotonic()
        _deploy(graph(models, faults, fault_state, replicas=2, others=2, version="v2"),
                wait=False)
        rolled_s = _until(lambda: _status(APP) == "RUNNING" and all(
            not (_replica_ids(APP, d) & old) and len(_replica_ids(APP, d)) == 2
            for d, old in before.items()), 180, "replicas rolled")
        time.sleep(2)
    _record("F7 redeploy under load", requests=traffic.sent, statuses=traffic.statuses(),
            rollout_s=round(rolled_s, 1), p99_s=round(traffic.latency(0.99), 2),
            max_latency_s=round(traffic.latency(1.0), 2))
    assert traffic.statuses() == {200: traffic.sent}  # no 5xx, nothing dropped
    assert time.monotonic() - started < 200


def test_l4_autoscaling_ramp_up_and_down(base_app, models, faults, fault_state):
    autoscaling = {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 1,
                   "upscale_delay_s": 1, "downscale_delay_s": 3,
                   # Ray wants the window longer than `metrics_interval_s` (10 s by default;
                   # the pushes themselves are every 0.5 s here, see conftest).
                   "look_back_period_s": 10.5}
    _deploy(graph(models, faults, fault_state, autoscaling=autoscaling, version="v3"))
    _until(lambda: _running(APP) == 1, 60, "one replica at rest")
    timeline = []
    with Traffic(base_app, clients=1, retry=False) as light:
        time.sleep(3)
    with Traffic(base_app, clients=6, retry=False) as heavy:
        loaded = time.monotonic()
        up_s = _until(lambda: _running(APP) >= 2, 60, "scaled up")
        _until(lambda: _running(APP) >= 3 or time.monotonic() - loaded > up_s + 10, 60,
               "peak")
        peak = _running(APP)
        timeline.append(("peak", round(time.monotonic() - loaded, 1), peak))
    idle = time.monotonic()
    down_s = _until(lambda: _running(APP) == 1 and len(_replica_ids(APP)) == 1, 90,
                    "scaled down")
    _record("L4 autoscaling ramp", light=light.statuses(), heavy=heavy.statuses(),
            scale_up_s=round(up_s, 1), peak_replicas=peak,
            scale_down_s=round(down_s, 1), heavy_p99_s=round(heavy.latency(0.99), 2))
    assert set(light.statuses()) == {200} and set(heavy.statuses()) == {200}
    assert peak >= 2 and up_s < 45  # upscale delay 1 s + a replica start on a busy 2-core box
    assert time.monotonic() - idle < 90


def test_f6_constructor_failures(serve_url, models, tmp_path, fault_state):
    flaky, broken = tmp_path / "flaky", tmp_path / "broken"
    for path, fails in ((flaky, 2), (broken, 1000)):
        path.mkdir()
        (path / "ctor-fail").write_text(str(fails))
    started = time.monotonic()
    _deploy(graph(models, flaky, fault_state), name="flaky", prefix="/flaky", wait=False)
    _deploy(graph(models, broken, fault_state), name="broken", prefix="/broken", wait=False)
    failed_s = _until(lambda: _status("broken") == "DEPLOY_FAILED", 240, "broken reported")
    _until(lambda: _status("flaky") == "RUNNING", 240, "flaky up")
    up_s = time.monotonic() - started
    with httpx.Client(base_url=serve_url, timeout=30,
                      headers={"Authorization": f"Key {API_KEY}"}) as c:
        _warm(serve_url, "/flaky/generate")
        t0 = time.monotonic()
        refused = c.post("/broken/generate", json=tiny_request())
        refused_s = time.monotonic() - t0
    from ray import serve

    message = serve.status().applications["broken"].deployments["SDXLBase"].message
    _record("F6 constructor fails", flaky_attempts=int((flaky / "ctor-attempts").read_text()),
            flaky_up_s=round(up_s, 1),
            broken_reported_s=round(failed_s, 1), broken_answer=refused.status_code,
            broken_answer_s=round(refused_s, 3))
    for name in ("flaky", "broken"):
        serve.delete(name)
    assert int((flaky / "ctor-attempts").read_text()) == 3  # two failures, then up
    assert refused.status_code == 503 and refused.headers.get("retry-after"), refused.text
    assert "SDXLBase" in refused.json()["detail"] and refused_s < 2
    assert "injected constructor failure" in message

"""The queue under a burst and under faults: 200 submits at once, and queue workers and the
ingress killed while jobs are queued and running. Nothing may be lost or finish twice."""

from __future__ import annotations

import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import API_KEY, LEASE_S
from tests.queue_util import SDXL, sdxl_input, wait_for

RESULTS = {}


@pytest.fixture(scope="module")
def store(state_dir):
    from genserve.jobs.store import JobStore

    return JobStore(f"sqlite:///{state_dir / 'usage.db'}")


def _all_done(store, ids: list[str]) -> list:
    jobs = [store.get(i) for i in ids]
    return jobs if all(j.status == "COMPLETED" for j in jobs) else []


def test_burst_of_200_submits_each_reach_one_end(app_url, store):
    def one(i: int) -> tuple[str, float]:
        with httpx.Client(base_url=app_url, timeout=60,
                          headers={"Authorization": f"Key {API_KEY}"}) as c:
            t0 = time.perf_counter()
            r = c.post(SDXL, json={**sdxl_input(num_inference_steps=1, seed=i),
                                   "sync_mode": True})
            elapsed = time.perf_counter() - t0
            assert r.status_code == 200, r.text
            return r.json()["request_id"], elapsed

    started = time.perf_counter()
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(one, range(200)))
    ids = [a[0] for a in answers]
    assert len(set(ids)) == 200
    jobs = wait_for(lambda: _all_done(store, ids), timeout_s=600, every_s=0.5)
    drained = time.perf_counter() - started
    assert [j.outcome for j in jobs] == ["OK"] * 200
    assert all(j.attempts == 1 for j in jobs)
    latencies = sorted(a[1] for a in answers)
    RESULTS["burst"] = {
        "submits": 200, "concurrency": 32,
        "submit_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "submit_p99_ms": round(latencies[int(0.99 * len(latencies)) - 1] * 1000, 1),
        "all_done_s": round(drained, 1)}
    print("\nqueue burst:", json.dumps(RESULTS["burst"]))


def _replica_actor(fragment: str):
    import ray

    for info in ray.util.list_named_actors(all_namespaces=True):
        if fragment in info["name"]:
            return ray.get_actor(info["name"], namespace=info["namespace"])
    raise LookupError(fragment)


def test_killing_a_worker_and_the_ingress_loses_nothing(client, app_url, store, files_dir):
    import ray

    # More jobs than the two workers' 2 × 8 slots: some queued, some running at the kill.
    ids = [client.post(SDXL, json=sdxl_input(num_inference_steps=20, seed=i)).json()[
        "request_id"] for i in range(20)]
    # A worker holding a running job: its lease names its replica.
    victim = wait_for(lambda: next((j.lease_owner for j in map(store.get, ids)
                                    if j.status == "IN_PROGRESS"), None), timeout_s=60)
    held = [i for i in ids if store.get(i).lease_owner == victim]
    queued = sum(store.get(i).status == "IN_QUEUE" for i in ids)
    assert held and queued, (len(held), queued)
    ray.kill(_replica_actor(f"JobWorker#{victim.rsplit('-', 1)[0]}"), no_restart=True)
    killed_at = time.perf_counter()
    ray.kill(_replica_actor("#Ingress#"), no_restart=True)

    # Its jobs are taken over once the lease runs out; HTTP comes back with a new ingress.
    wait_for(lambda: all(store.get(i).attempts >= 2 or store.get(i).status == "COMPLETED"
                         for i in held), timeout_s=120)
    reclaimed_s = time.perf_counter() - killed_at
    jobs = wait_for(lambda: _all_done(store, ids), timeout_s=300, every_s=0.5)
    done_s = time.perf_counter() - killed_at
    http_back = wait_for(lambda: _healthy(app_url), timeout_s=120)
    assert http_back

    assert [j.outcome for j in jobs] == ["OK"] * len(ids), [(j.outcome, j.error) for j in jobs]
    assert any(store.get(i).attempts == 2 for i in held) or not held
    for job in jobs:
        completed = [line for line in store.logs(job.id) if line.message == "completed"]
        assert len(completed) == 1, (job.id, [x.message for x in store.logs(job.id)])
        stored = [p for p in (files_dir / job.id).rglob("*") if p.is_file()]
        assert len(stored) == 1 and stored[0].suffix == ".png", stored  # written once
        r = client.get(f"/queue/requests/{job.id}")
        assert r.status_code == 200 and len(r.json()["images"]) == 1
    RESULTS["kill"] = {"jobs": len(ids), "held_by_killed_worker": len(held),
                       "queued_at_kill": queued,
                       "lease_s": LEASE_S, "kill_to_reclaimed_s": round(reclaimed_s, 1),
                       "kill_to_all_done_s": round(done_s, 1)}
    print("\nqueue kill:", json.dumps(RESULTS["kill"]))


def _healthy(app_url: str) -> bool:
    try:
        return httpx.get(f"{app_url}/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False

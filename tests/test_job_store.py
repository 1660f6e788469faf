"""The job store's rules, on both databases it supports: SQLite (WAL) and a real PostgreSQL 16
server started here (`pgserver`, on a unix socket). Same code, same assertions."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from genserve.jobs.store import (
    CANCELLED,
    COMPLETED,
    ERROR,
    IN_PROGRESS,
    IN_QUEUE,
    OK,
    Finish,
    IdempotencyConflict,
    JobStore,
    NewJob,
)


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory):
    pgserver = pytest.importorskip("pgserver")
    server = pgserver.get_server(str(tmp_path_factory.mktemp("pg")), cleanup_mode="stop")
    yield server.get_uri().replace("postgresql://", "postgresql+psycopg://")
    server.cleanup()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path) -> JobStore:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    s = JobStore(url, max_attempts=2)
    with s.engine.begin() as conn:  # a clean slate per test on the shared server
        for table in ("webhooks", "job_logs", "jobs"):
            conn.exec_driver_sql(f"DELETE FROM {table}")
    return s


def new(endpoint="sdxl", kind="inference", **kw) -> NewJob:
    return NewJob(id=str(uuid.uuid4()), endpoint=endpoint, kind=kind,
                  input=kw.pop("input", {"prompt": "x"}), owner=kw.pop("owner", "o"), **kw)


def test_submit_is_stored_and_positions_follow_priority(store):
    a, created = store.submit(new())
    assert created and store.get(a.id).status == IN_QUEUE
    b, _ = store.submit(new())
    low, _ = store.submit(new(priority=1))
    c, _ = store.submit(new())
    assert [store.queue_position(j) for j in (a, b, c, low)] == [0, 1, 2, 3]
    training, _ = store.submit(new(endpoint="personalization", kind="training"))
    assert store.queue_position(training) == 0  # its own queue
    claimed = store.claim("w", "inference", 10, 30)
    assert [j.id for j in claimed] == [a.id, b.id, c.id, low.id]


def test_idempotency_key_scoped_by_owner_and_body(store):
    first, created = store.submit(new(idempotency_key="k"))
    again, created_again = store.submit(new(idempotency_key="k"))
    assert created and not created_again and again.id == first.id
    with pytest.raises(IdempotencyConflict):
        store.submit(new(idempotency_key="k", input={"prompt": "other"}))
    other_owner, created = store.submit(new(idempotency_key="k", owner="someone-else"))
    assert created and other_owner.id != first.id


def test_one_idempotency_key_submitted_concurrently_makes_one_job(store):
    barrier = threading.Barrier(6)
    answers = []

    def submit():
        barrier.wait()
        answers.append(store.submit(new(idempotency_key="same", input={"prompt": "x"})))

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({job.id for job, _ in answers}) == 1
    assert sorted(created for _, created in answers) == [False] * 5 + [True]
    assert store.counts() == {IN_QUEUE: 1}


def test_concurrent_claims_never_share_a_job(store):
    ids = {store.submit(new())[0].id for _ in range(40)}
    got: dict[str, list[str]] = {}

    def worker(name: str):
        mine = []
        while True:
            batch = store.claim(name, "inference", 3, 60)
            if not batch:
                break
            mine += [j.id for j in batch]
        got[name] = mine

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [i for ids_ in got.values() for i in ids_]
    assert sorted(claimed) == sorted(ids)  # every job once, none twice


def test_expired_lease_is_reclaimed_and_only_the_holder_finishes(store):
    job, _ = store.submit(new())
    assert store.claim("dead", "inference", 1, 0.2)[0].attempts == 1
    assert store.claim("other", "inference", 1, 30) == []  # lease still running
    time.sleep(0.3)
    taken = store.claim("alive", "inference", 1, 30)
    assert [(j.id, j.attempts, j.status) for j in taken] == [(job.id, 2, IN_PROGRESS)]
    assert not store.finish(job.id, "dead", Finish(OK, output={"late": True}))
    assert store.finish(job.id, "alive", Finish(OK, output={"images": []}, metrics={"t": 1}))
    assert not store.finish(job.id, "alive", Finish(ERROR, error="twice"))  # terminal stays
    done = store.get(job.id)
    assert (done.status, done.outcome, done.output) == (COMPLETED, OK, {"images": []})


def test_a_job_that_keeps_killing_workers_fails(store):
    job, _ = store.submit(new())
    for _ in range(2):  # max_attempts = 2
        store.claim("w", "inference", 1, 0.05)
        time.sleep(0.1)
    assert store.claim("w", "inference", 1, 30) == []
    done = store.get(job.id)
    assert (done.status, done.outcome, done.error_type) == (COMPLETED, ERROR, "worker_lost")


def test_renew_keeps_the_lease_and_reports_cancels(store):
    job, _ = store.submit(new())
    store.claim("w", "inference", 1, 0.3)
    for _ in range(3):
        time.sleep(0.15)
        held, cancel = store.renew("w", [job.id], 0.3)
        assert held == {job.id} and cancel == set()
    assert store.claim("x", "inference", 1, 30) == []
    assert store.request_cancel(job.id) == "requested"
    assert store.renew("w", [job.id], 0.3) == ({job.id}, {job.id})
    assert store.renew("intruder", [job.id], 0.3) == (set(), set())


def test_cancel_in_each_state(store):
    queued, _ = store.submit(new(webhook_url="https://hooks.example.com/x"))
    assert store.request_cancel(queued.id) == "cancelled"
    done = store.get(queued.id)
    assert (done.status, done.outcome, done.error_status) == (COMPLETED, CANCELLED, 400)
    assert store.claim("w", "inference", 5, 30) == []
    assert len(store.webhook_rows(queued.id)) == 1
    assert store.request_cancel(queued.id) == "completed"
    assert store.request_cancel("no-such-id") is None

    # Asked while running, then its worker died: the next claim ends it, it does not rerun.
    running, _ = store.submit(new())
    store.claim("w", "inference", 1, 0.05)
    assert store.request_cancel(running.id) == "requested"
    time.sleep(0.1)
    assert store.claim("w2", "inference", 1, 30) == []
    assert store.get(running.id).outcome == CANCELLED


def test_start_deadline(store):
    late, _ = store.submit(new(start_deadline=time.time() - 1))
    fine, _ = store.submit(new(start_deadline=time.time() + 60))
    assert [j.id for j in store.claim("w", "inference", 5, 30)] == [fine.id]
    assert store.expire_start_deadlines() == [late.id]
    done = store.get(late.id)
    assert (done.outcome, done.error_type, done.error_status) == (ERROR, "request_timeout", 504)
    assert store.expire_start_deadlines() == []


def test_webhook_outbox(store):
    job, _ = store.submit(new(webhook_url="https://hooks.example.com/x"))
    store.claim("w", "inference", 1, 30)
    assert store.claim_webhooks("d", 5, 30) == []  # nothing before the end
    store.finish(job.id, "w", Finish(OK, output={}))
    [row] = store.claim_webhooks("d", 5, 30)
    assert row["event_id"].startswith("msg_") and row["url"].endswith("/x")
    assert store.claim_webhooks("d2", 5, 30) == []  # leased
    store.webhook_attempted(row["event_id"], ok=False, status=500, error="boom",
                            retry_at=time.time() + 0.2)
    assert store.claim_webhooks("d", 5, 30) == []
    time.sleep(0.25)
    [again] = store.claim_webhooks("d", 5, 30)
    assert again["event_id"] == row["event_id"] and again["attempts"] == 1
    store.webhook_attempted(row["event_id"], ok=True, status=200, error=None, retry_at=None)
    [final] = store.webhook_rows(job.id)
    assert final["delivered_at"] and final["attempts"] == 2 and final["failed_at"] is None


def test_logs_keep_their_order(store):
    job, _ = store.submit(new())
    for i in range(5):
        store.add_log(job.id, f"step {i}")
    assert [line.message for line in store.logs(job.id)] == [f"step {i}" for i in range(5)]
    third = store.logs(job.id)[2].seq
    assert [line.message for line in store.logs(job.id, after=third)] == ["step 3", "step 4"]
    assert store.counts() == {IN_QUEUE: 1}

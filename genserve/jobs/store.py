"""The durable job store behind the queue: SQLite (WAL) by default, PostgreSQL for several nodes.

One module owns every SQL statement (SQLAlchemy Core, so both dialects run the same code).
The rules it enforces, not its callers:

- a job row is committed before `submit` returns; an ``Idempotency-Key`` replay returns the
  same row;
- states only move forward: IN_QUEUE → IN_PROGRESS → COMPLETED (outcome OK, ERROR or
  CANCELLED), or IN_QUEUE → COMPLETED (cancelled, or its start deadline passed);
- a worker holds a job through a lease it renews; a job whose lease ran out (its worker died)
  is claimed again (at-least-once), up to ``max_attempts``, then fails instead of looping;
- only the lease holder can finish a job, so a job reaches exactly one terminal state even
  when a presumed-dead worker comes back;
- the webhook for a finished job is queued in the same transaction that finishes it (outbox),
  so a crash cannot lose it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

metadata = sa.MetaData()

jobs = sa.Table(
    "jobs", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("endpoint", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("outcome", sa.String(16)),
    sa.Column("input", sa.Text, nullable=False),
    sa.Column("sync_mode", sa.Boolean, nullable=False, default=False),
    sa.Column("output", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("error_type", sa.String(64)),
    sa.Column("error_status", sa.Integer),
    sa.Column("metrics", sa.Text),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("idempotency_key", sa.String(255)),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("webhook_url", sa.Text),
    sa.Column("base_url", sa.Text),
    sa.Column("priority", sa.Integer, nullable=False, default=0),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("start_deadline", sa.Float),
    sa.Column("lease_owner", sa.String(128)),
    sa.Column("lease_expires", sa.Float),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.UniqueConstraint("owner", "endpoint", "idempotency_key", name="uq_jobs_idempotency"),
    sa.Index("ix_jobs_queue", "status", "priority", "created_at"),
)

job_logs = sa.Table(
    "job_logs", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(36), nullable=False, index=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("level", sa.String(8), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
)

webhooks = sa.Table(
    "webhooks", metadata,
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("job_id", sa.String(36), nullable=False, index=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("lease_owner", sa.String(128)),
    sa.Column("lease_expires", sa.Float),
    sa.Column("delivered_at", sa.Float),
    sa.Column("failed_at", sa.Float),
    sa.Column("last_status", sa.Integer),
    sa.Column("last_error", sa.Text),
    sa.Index("ix_webhooks_due", "delivered_at", "failed_at", "next_attempt_at"),
)

IN_QUEUE, IN_PROGRESS, COMPLETED = "IN_QUEUE", "IN_PROGRESS", "COMPLETED"
OK, ERROR, CANCELLED = "OK", "ERROR", "CANCELLED"
PRIORITIES = {"normal": 0, "low": 1}


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request body."""


@dataclass
class Job:
    id: str
    endpoint: str
    kind: str
    status: str
    outcome: str | None
    input: dict
    sync_mode: bool
    output: Any
    error: str | None
    error_type: str | None
    error_status: int | None
    metrics: dict
    webhook_url: str | None
    base_url: str | None
    priority: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    start_deadline: float | None
    attempts: int
    cancel_requested: bool
    lease_owner: str | None = None

    @classmethod
    def from_row(cls, row) -> "Job":
        m = row._mapping
        return cls(
            id=m["id"], endpoint=m["endpoint"], kind=m["kind"], status=m["status"],
            outcome=m["outcome"], input=json.loads(m["input"]), sync_mode=bool(m["sync_mode"]),
            output=json.loads(m["output"]) if m["output"] is not None else None,
            error=m["error"], error_type=m["error_type"], error_status=m["error_status"],
            metrics=json.loads(m["metrics"]) if m["metrics"] else {},
            webhook_url=m["webhook_url"], base_url=m["base_url"], priority=m["priority"],
            created_at=m["created_at"], started_at=m["started_at"],
            finished_at=m["finished_at"], start_deadline=m["start_deadline"],
            attempts=m["attempts"], cancel_requested=bool(m["cancel_requested"]),
            lease_owner=m["lease_owner"])


@dataclass
class NewJob:
    id: str
    endpoint: str
    kind: str
    input: dict
    owner: str
    sync_mode: bool = False
    idempotency_key: str | None = None
    webhook_url: str | None = None
    base_url: str | None = None
    priority: int = 0
    start_deadline: float | None = None
    request_hash: str = field(default="")

    def __post_init__(self):
        if not self.request_hash:
            canonical = json.dumps([self.endpoint, self.input, self.sync_mode, self.webhook_url],
                                   sort_keys=True, separators=(",", ":"))
            self.request_hash = hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class LogLine:
    seq: int
    ts: float
    level: str
    message: str


@dataclass
class Finish:
    """How a job ends. ``error_status`` is the HTTP status its result answers with."""

    outcome: str
    output: Any = None
    error: str | None = None
    error_type: str | None = None
    error_status: int | None = None
    metrics: dict = field(default_factory=dict)


def make_engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _connect(dbapi_conn, _record):
            # We issue BEGIN ourselves (pysqlite's own transaction handling defers it and
            # turns read-then-write transactions into "database is locked" upgrades).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(conn):
            # Writers take the write lock up front; WAL readers never block on it.
            write = conn.get_execution_options().get("write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
    else:
        engine = sa.create_engine(url, pool_pre_ping=True)
    metadata.create_all(engine)
    return engine


class JobStore:
    def __init__(self, url: str, max_attempts: int = 3):
        self.engine = make_engine(url)
        self._writer = self.engine.execution_options(write=True)
        self.max_attempts = max_attempts

    # -- submit and read ---------------------------------------------------------------------

    def submit(self, new: NewJob) -> tuple[Job, bool]:
        """Store ``new`` and return it with True, or the earlier job with the same idempotency
        key with False (`IdempotencyConflict` when that one had another body)."""
        try:
            return self._submit(new)
        except sa.exc.IntegrityError:
            # Two submits with one key raced past the lookup (PostgreSQL's read committed;
            # SQLite serializes writers): the unique index let one in, so this one is a replay.
            if new.idempotency_key is None:
                raise
            return self._submit(new)

    def _submit(self, new: NewJob) -> tuple[Job, bool]:
        now = time.time()
        with self._writer.begin() as conn:
            if new.idempotency_key is not None:
                earlier = conn.execute(jobs.select().where(
                    jobs.c.owner == new.owner, jobs.c.endpoint == new.endpoint,
                    jobs.c.idempotency_key == new.idempotency_key)).first()
                if earlier is not None:
                    if earlier._mapping["request_hash"] != new.request_hash:
                        raise IdempotencyConflict(new.idempotency_key)
                    return Job.from_row(earlier), False
            conn.execute(jobs.insert().values(
                id=new.id, endpoint=new.endpoint, kind=new.kind, status=IN_QUEUE,
                input=json.dumps(new.input), sync_mode=new.sync_mode, owner=new.owner,
                idempotency_key=new.idempotency_key, request_hash=new.request_hash,
                webhook_url=new.webhook_url, base_url=new.base_url, priority=new.priority,
                created_at=now, start_deadline=new.start_deadline, attempts=0,
                cancel_requested=False))
            row = conn.execute(jobs.select().where(jobs.c.id == new.id)).one()
        return Job.from_row(row), True

    def get(self, job_id: str) -> Job | None:
        with self.engine.connect() as conn:
            row = conn.execute(jobs.select().where(jobs.c.id == job_id)).first()
        return Job.from_row(row) if row is not None else None

    def queue_position(self, job: Job) -> int:
        """Jobs of the same kind that will be claimed before this one (0 = next)."""
        ahead = sa.or_(jobs.c.priority < job.priority,
                       sa.and_(jobs.c.priority == job.priority,
                               jobs.c.created_at < job.created_at))
        query = sa.select(sa.func.count()).select_from(jobs).where(
            jobs.c.status == IN_QUEUE, jobs.c.kind == job.kind, ahead)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def logs(self, job_id: str, after: int = 0) -> list[LogLine]:
        query = job_logs.select().where(job_logs.c.job_id == job_id, job_logs.c.seq > after) \
            .order_by(job_logs.c.seq)
        with self.engine.connect() as conn:
            return [LogLine(r.seq, r.ts, r.level, r.message) for r in conn.execute(query)]

    def add_log(self, job_id: str, message: str, level: str = "INFO") -> None:
        with self._writer.begin() as conn:
            conn.execute(job_logs.insert().values(job_id=job_id, ts=time.time(), level=level,
                                                  message=message))

    def counts(self) -> dict[str, int]:
        """Jobs per state, terminal ones per outcome (``COMPLETED:OK`` …)."""
        state = sa.func.coalesce(jobs.c.status + ":" + jobs.c.outcome, jobs.c.status)
        query = sa.select(state, sa.func.count()).group_by(state)
        with self.engine.connect() as conn:
            return {s: int(n) for s, n in conn.execute(query)}

    # -- workers -------------------------------------------------------------------------------

    def claim(self, worker: str, kind: str, limit: int, lease_s: float) -> list[Job]:
        """Up to ``limit`` jobs of ``kind`` for ``worker``: queued ones in priority order, and
        running ones whose lease ran out. A reclaimed job past ``max_attempts`` fails instead;
        one whose cancel was asked for ends CANCELLED without running again."""
        if limit <= 0:
            return []
        now = time.time()
        # A queued job past its start deadline is never started (the sweep fails it).
        startable = sa.or_(jobs.c.start_deadline.is_(None), jobs.c.start_deadline >= now)
        claimable = sa.or_(sa.and_(jobs.c.status == IN_QUEUE, startable),
                           sa.and_(jobs.c.status == IN_PROGRESS, jobs.c.lease_expires < now))
        claimed = []
        with self._writer.begin() as conn:
            rows = conn.execute(
                sa.select(jobs.c.id, jobs.c.status, jobs.c.attempts, jobs.c.cancel_requested)
                .where(jobs.c.kind == kind, claimable)
                .order_by(jobs.c.priority, jobs.c.created_at).limit(limit)).all()
            for job_id, status, attempts, cancel_requested in rows:
                if status == IN_PROGRESS and (cancel_requested or attempts >= self.max_attempts):
                    end = Finish(CANCELLED, error="request was cancelled",
                                 error_type="request_cancelled", error_status=400) \
                        if cancel_requested else Finish(
                            ERROR, error=f"the worker running this request stopped {attempts} "
                            "times; giving up", error_type="worker_lost", error_status=500)
                    self._finish(conn, job_id, end, now, claimable)
                    continue
                done = conn.execute(jobs.update().where(jobs.c.id == job_id, claimable).values(
                    status=IN_PROGRESS, lease_owner=worker, lease_expires=now + lease_s,
                    attempts=jobs.c.attempts + 1,
                    started_at=sa.func.coalesce(jobs.c.started_at, now)))
                if done.rowcount == 1:
                    claimed.append(job_id)
            result = [Job.from_row(r) for r in conn.execute(
                jobs.select().where(jobs.c.id.in_(claimed)))] if claimed else []
        return sorted(result, key=lambda j: (j.priority, j.created_at))

    def renew(self, worker: str, job_ids: list[str], lease_s: float) -> tuple[set[str], set[str]]:
        """Extend ``worker``'s leases; returns (ids still held, ids whose cancel was asked)."""
        if not job_ids:
            return set(), set()
        now = time.time()
        mine = sa.and_(jobs.c.id.in_(job_ids), jobs.c.status == IN_PROGRESS,
                       jobs.c.lease_owner == worker)
        with self._writer.begin() as conn:
            conn.execute(jobs.update().where(mine).values(lease_expires=now + lease_s))
            rows = conn.execute(sa.select(jobs.c.id, jobs.c.cancel_requested).where(mine)).all()
        return {r[0] for r in rows}, {r[0] for r in rows if r[1]}

    def finish(self, job_id: str, worker: str, end: Finish) -> bool:
        """End a job this worker holds; False when its lease was lost (someone else has it, or
        it already ended): the caller's result is then dropped."""
        with self._writer.begin() as conn:
            held = sa.and_(jobs.c.status == IN_PROGRESS, jobs.c.lease_owner == worker)
            return self._finish(conn, job_id, end, time.time(), held)

    def _finish(self, conn, job_id: str, end: Finish, now: float, condition) -> bool:
        done = conn.execute(jobs.update().where(jobs.c.id == job_id, condition).values(
            status=COMPLETED, outcome=end.outcome, finished_at=now, lease_owner=None,
            lease_expires=None,
            output=json.dumps(end.output) if end.output is not None else None,
            error=end.error, error_type=end.error_type, error_status=end.error_status,
            metrics=json.dumps(end.metrics)))
        if done.rowcount != 1:
            return False
        url = conn.execute(sa.select(jobs.c.webhook_url).where(jobs.c.id == job_id)).scalar()
        if url:
            conn.execute(webhooks.insert().values(
                event_id=f"msg_{job_id.replace('-', '')}", job_id=job_id, url=url, attempts=0,
                next_attempt_at=now))
        return True

    def request_cancel(self, job_id: str) -> str | None:
        """``"cancelled"`` (it was queued: now CANCELLED), ``"requested"`` (running: its worker
        stops it), ``"completed"`` (too late) or None (unknown id)."""
        now = time.time()
        end = Finish(CANCELLED, error="request was cancelled", error_type="request_cancelled",
                     error_status=400)
        with self._writer.begin() as conn:
            status = conn.execute(sa.select(jobs.c.status).where(jobs.c.id == job_id)).scalar()
            if status is None:
                return None
            if status == IN_QUEUE:
                self._finish(conn, job_id, end, now, jobs.c.status == IN_QUEUE)
                return "cancelled"
            if status == IN_PROGRESS:
                conn.execute(jobs.update().where(jobs.c.id == job_id)
                             .values(cancel_requested=True))
                return "requested"
            return "completed"

    def expire_start_deadlines(self) -> list[str]:
        """Fail queued jobs whose start deadline (X-Fal-Request-Timeout) has passed."""
        now = time.time()
        late = sa.and_(jobs.c.status == IN_QUEUE, jobs.c.start_deadline.is_not(None),
                       jobs.c.start_deadline < now)
        with self._writer.begin() as conn:
            ids = [r[0] for r in conn.execute(sa.select(jobs.c.id).where(late))]
            for job_id in ids:
                self._finish(conn, job_id, Finish(
                    ERROR, error="request could not start before its start timeout "
                    "(X-Fal-Request-Timeout)", error_type="request_timeout", error_status=504),
                    now, late)
        return ids

    # -- webhooks (outbox) ---------------------------------------------------------------------

    def claim_webhooks(self, worker: str, limit: int, lease_s: float) -> list[dict]:
        now = time.time()
        due = sa.and_(webhooks.c.delivered_at.is_(None), webhooks.c.failed_at.is_(None),
                      webhooks.c.next_attempt_at <= now,
                      sa.or_(webhooks.c.lease_expires.is_(None),
                             webhooks.c.lease_expires < now))
        with self._writer.begin() as conn:
            ids = [r[0] for r in conn.execute(
                sa.select(webhooks.c.event_id).where(due)
                .order_by(webhooks.c.next_attempt_at).limit(limit))]
            if not ids:
                return []
            conn.execute(webhooks.update().where(webhooks.c.event_id.in_(ids), due)
                         .values(lease_owner=worker, lease_expires=now + lease_s))
            return [dict(r._mapping) for r in conn.execute(webhooks.select().where(
                webhooks.c.event_id.in_(ids), webhooks.c.lease_owner == worker))]

    def webhook_attempted(self, event_id: str, *, ok: bool, status: int | None,
                          error: str | None, retry_at: float | None) -> None:
        """Record one delivery attempt: delivered, retry at ``retry_at``, or given up."""
        now = time.time()
        values: dict[str, Any] = {"attempts": webhooks.c.attempts + 1, "last_status": status,
                                  "last_error": error, "lease_owner": None,
                                  "lease_expires": None}
        if ok:
            values["delivered_at"] = now
        elif retry_at is None:
            values["failed_at"] = now
        else:
            values["next_attempt_at"] = retry_at
        with self._writer.begin() as conn:
            conn.execute(webhooks.update().where(webhooks.c.event_id == event_id)
                         .values(**values))

    def webhook_rows(self, job_id: str) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(
                webhooks.select().where(webhooks.c.job_id == job_id))]

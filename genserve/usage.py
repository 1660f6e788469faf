"""Durable usage log: one row per HTTP request (the book's fields), in a real database.

SQLite (WAL) by default, any SQLAlchemy URL (PostgreSQL for several ingress nodes) otherwise.
A CSV in the container, as in the book, disappears with the container.

Beyond the book's fields a row says which pipeline served it, the model and LoRA it used and
the GPU-seconds it cost, when the route knows (`note`); otherwise they stay NULL rather than
guessed. Those columns came later: `make_engine` adds them to an older database in place.
"""

from __future__ import annotations

import contextvars
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from genserve.state import state_dir

log = logging.getLogger(__name__)

metadata = sa.MetaData()
usage_table = sa.Table(
    "usage_log", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(64), nullable=False, index=True),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("method", sa.String(8), nullable=False),
    sa.Column("endpoint", sa.String(512), nullable=False),
    sa.Column("client", sa.String(64)),
    sa.Column("latency_s", sa.Float, nullable=False),
    sa.Column("status_code", sa.Integer, nullable=False),
    sa.Column("successful", sa.Boolean, nullable=False),
    # Added later (nullable, no default: NULL means "not known for this request").
    sa.Column("pipeline", sa.String(64)),
    sa.Column("model", sa.String(512)),
    sa.Column("lora_id", sa.String(256)),
    sa.Column("gpu_seconds", sa.Float),
)
LATER_COLUMNS = ("pipeline", "model", "lora_id", "gpu_seconds")


@dataclass
class UsageRecord:
    request_id: str
    started_at: datetime  # aware, UTC
    method: str
    endpoint: str
    client: str | None
    latency_s: float
    status_code: int
    pipeline: str | None = None
    model: str | None = None
    lora_id: str | None = None
    gpu_seconds: float | None = None

    def as_row(self) -> dict:
        return {**self.__dict__, "successful": self.status_code < 400}


@dataclass
class UsageNote:
    """What a route learns about its request for the log: the middleware puts a fresh one in
    `current_note` before the route runs and reads it back after the response."""

    pipeline: str | None = None
    model: str | None = None
    lora_id: str | None = None
    gpu_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


current_note: contextvars.ContextVar[UsageNote | None] = contextvars.ContextVar(
    "genserve_usage_note", default=None)


def note(**fields: Any) -> None:
    """Fill in this request's usage note (no-op outside an HTTP request, e.g. a queue job)."""
    current = current_note.get()
    if current is not None:
        for key, value in fields.items():
            if value is not None:
                setattr(current, key, value)


# Native routes → catalog endpoint; queue, run and V2 paths carry the name themselves.
NATIVE_PIPELINES = {"/generate": "sdxl", "/v1/chat": "chat", "/v1/chat/completions": "chat",
                    "/v1/models": "chat", "/v1/tts": "tts", "/v1/image-to-video":
                    "image-to-video", "/v1/text-to-video": "text-to-video",
                    "/v1/text-to-3d": "text-to-3d"}
_NAMED = re.compile(r"^/(?:queue|run)/[^/]+/([^/]+)|^/v2/models/([^/]+)")


def pipeline_for_path(path: str) -> str | None:
    """The catalog endpoint a request path belongs to, None for the rest (files, status by
    request id, docs). Only catalog names come back, so it is safe as a metric tag.

    >>> pipeline_for_path("/generate"), pipeline_for_path("/queue/genserve/tts/requests/x")
    ('sdxl', 'tts')
    """
    if path in NATIVE_PIPELINES:
        return NATIVE_PIPELINES[path]
    match = _NAMED.match(path)
    if match is None:
        return None
    from genserve.endpoints import ENDPOINTS

    name = match.group(1) or match.group(2)
    return name if name in ENDPOINTS else None


def default_database_url() -> str:
    state = state_dir()
    state.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{state / 'genserve.db'}"


def _add_missing_columns(engine: sa.Engine) -> None:
    """A database made before the later columns existed gets them (NULL for old rows):
    `create_all` creates missing tables only, never missing columns."""
    present = {c["name"] for c in sa.inspect(engine).get_columns(usage_table.name)}
    with engine.begin() as conn:
        for name in LATER_COLUMNS:
            if name not in present:
                column = usage_table.c[name]
                kind = column.type.compile(dialect=engine.dialect)
                try:
                    conn.execute(sa.text(f"ALTER TABLE {usage_table.name} "
                                         f"ADD COLUMN {name} {kind}"))
                except sa.exc.OperationalError:  # another replica added it first
                    log.info("column %s already added", name)


def make_engine(url: str | None = None) -> sa.Engine:
    url = url or default_database_url()
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(conn, _record):
            # WAL lets readers (the usage API, the CLI) run while the ingress writes.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
    else:
        engine = sa.create_engine(url, pool_pre_ping=True)
    metadata.create_all(engine)
    _add_missing_columns(engine)
    return engine


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class UsageLog:
    def __init__(self, url: str | None = None):
        self.engine = make_engine(url)

    def record(self, rec: UsageRecord) -> None:
        with self.engine.begin() as conn:
            conn.execute(usage_table.insert().values(**rec.as_row()))

    def recent(self, limit: int = 100) -> list[dict]:
        query = usage_table.select().order_by(usage_table.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def query(self, *, since: datetime | None = None, until: datetime | None = None,
              endpoint: str | None = None, pipeline: str | None = None,
              status: int | None = None, successful: bool | None = None,
              limit: int = 100) -> dict[str, Any]:
        """Rows matching every given filter (newest first, at most ``limit``) and totals over
        *all* matching rows, overall and per pipeline. ``endpoint`` is a path prefix.

        >>> UsageLog("sqlite://").query(pipeline="sdxl")["totals"]["requests"]
        0
        """
        t = usage_table
        since, until = as_utc(since), as_utc(until)
        where = []
        if since is not None:
            where.append(t.c.started_at >= since)
        if until is not None:
            where.append(t.c.started_at < until)
        if endpoint:
            where.append(t.c.endpoint.like(_escape_like(endpoint) + "%", escape="\\"))
        if pipeline:
            where.append(t.c.pipeline == pipeline)
        if status is not None:
            where.append(t.c.status_code == status)
        if successful is not None:
            where.append(t.c.successful == successful)
        cond = sa.and_(sa.true(), *where)
        rows_q = t.select().where(cond).order_by(t.c.id.desc()).limit(limit)
        aggregates = [sa.func.count().label("requests"),
                      sa.func.sum(sa.case((t.c.successful, 0), else_=1)).label("errors"),
                      sa.func.avg(t.c.latency_s).label("mean_latency_s"),
                      sa.func.max(t.c.latency_s).label("max_latency_s"),
                      sa.func.sum(t.c.gpu_seconds).label("gpu_seconds")]
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(rows_q)]
            totals = conn.execute(sa.select(*aggregates).where(cond)).one()._mapping
            per = conn.execute(sa.select(t.c.pipeline, *aggregates).where(cond)
                               .group_by(t.c.pipeline).order_by(t.c.pipeline)).all()
        for row in rows:
            row.pop("id", None)
        return {"rows": rows, "totals": _aggregate(totals),
                "by_pipeline": {(r._mapping["pipeline"] or "other"): _aggregate(r._mapping)
                                for r in per}}


def as_utc(moment: datetime | None) -> datetime | None:
    """Rows are written in UTC; a naive bound is read as UTC too."""
    if moment is None or moment.tzinfo is None:
        return moment if moment is None else moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _aggregate(m: Any) -> dict[str, Any]:
    return {"requests": int(m["requests"] or 0), "errors": int(m["errors"] or 0),
            "mean_latency_s": None if m["mean_latency_s"] is None
            else round(float(m["mean_latency_s"]), 6),
            "max_latency_s": m["max_latency_s"],
            "gpu_seconds": None if m["gpu_seconds"] is None else round(float(m["gpu_seconds"]), 6)}

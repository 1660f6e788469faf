"""Durable usage log: one row per HTTP request (the book's fields), in a real database.

SQLite (WAL) by default, any SQLAlchemy URL (PostgreSQL for several ingress nodes) otherwise.
A CSV in the container, as in the book, disappears with the container.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from genserve.state import state_dir

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
)


@dataclass
class UsageRecord:
    request_id: str
    started_at: "object"  # datetime (aware, UTC)
    method: str
    endpoint: str
    client: str | None
    latency_s: float
    status_code: int

    def as_row(self) -> dict:
        return {**self.__dict__, "successful": self.status_code < 400}


def default_database_url() -> str:
    state = state_dir()
    state.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{state / 'genserve.db'}"


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
    return engine


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

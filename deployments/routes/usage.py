"""The usage log as an API: `GET /usage` filters the rows the ingress wrote and totals them."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from genserve.errors import InvalidInput
from genserve.usage import UsageLog, as_utc

MAX_ROWS = 1000


async def query(log: UsageLog, since: datetime | None, until: datetime | None,
                endpoint: str | None, pipeline: str | None, status: int | None,
                success: bool | None, limit: int) -> dict[str, Any]:
    since, until = as_utc(since), as_utc(until)  # naive bounds are UTC, as the rows
    if since is not None and until is not None and since >= until:
        raise InvalidInput(f"`since` must be before `until` but they are {since.isoformat()} "
                           f"and {until.isoformat()}", "since")
    result = await asyncio.to_thread(log.query, since=since, until=until, endpoint=endpoint,
                                     pipeline=pipeline, status=status, successful=success,
                                     limit=limit)
    filters = {"since": since, "until": until, "endpoint": endpoint, "pipeline": pipeline,
               "status": status, "success": success, "limit": limit}
    return {"filters": {k: v for k, v in filters.items() if v is not None}, **result}

"""Storing a finished job's output files, through storage outages.

A job is COMPLETED only after its files are stored; a storage hiccup is retried with backoff,
and if storage stays down the job fails with a clear error and whatever was written under its
request id is removed, so no partial output is ever reported as a success.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from genserve.errors import GenserveError, Unavailable

log = logging.getLogger(__name__)
ATTEMPTS = 4          # 0.5 + 1 + 2 s of retries by default
FIRST_DELAY_S = 0.5


async def store_outputs(files: Any, job_id: str, output: Any,
                        on_retry: Callable[[str], Awaitable[None]] | None = None, *,
                        attempts: int = ATTEMPTS, first_delay_s: float = FIRST_DELAY_S) -> Any:
    """``files.externalize(output, job_id)`` (data: files → stored references), retried."""
    delay = first_delay_s
    for attempt in range(1, attempts + 1):
        try:
            return await asyncio.to_thread(files.externalize, output, job_id)
        except GenserveError:
            raise  # the output itself is unusable: retrying cannot help
        except Exception as exc:
            if attempt == attempts:
                try:
                    await asyncio.to_thread(files.storage.delete_prefix, job_id)
                except Exception:
                    log.exception("could not remove job %s's partial outputs", job_id)
                raise Unavailable(f"could not store the outputs after {attempt} attempts "
                                  f"({type(exc).__name__}: {exc})") from exc
            if on_retry is not None:
                await on_retry(f"storing outputs failed ({type(exc).__name__}); retrying in "
                               f"{delay:.1f}s")
            await asyncio.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")

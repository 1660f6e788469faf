"""Progress from a model running in a worker thread, as a stream a handle caller can iterate.

Serve streams a deployment method's yields to the caller (``handle.options(stream=True)``), so
the queue worker sees ``Progress`` items while a diffusion runs and the result as the last item,
without the pipeline knowing about queues, databases or HTTP. Closing the stream (the job was
cancelled) stops the model at its next step.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from genserve.errors import GenserveError


@dataclass(frozen=True)
class Progress:
    stage: str   # "base", "refiner", …
    step: int    # steps done
    total: int

    def message(self) -> str:
        return f"{self.stage}: step {self.step}/{self.total}"


class Stopped(GenserveError):
    """The caller went away (cancelled): the model stops at its next step."""

    status_code = 499


async def stream_progress(stage: str, start: Callable[[Callable[[int, int], None]], Awaitable[Any]]
                          ) -> AsyncIterator[Any]:
    """Run ``start(on_step)`` and yield a `Progress` per ``on_step(done, total)`` call (made
    from any thread), then the result."""
    loop = asyncio.get_running_loop()
    items: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()
    done = object()

    def on_step(step: int, total: int) -> None:
        if stop.is_set():
            raise Stopped("stopped: the request was cancelled")
        loop.call_soon_threadsafe(items.put_nowait, Progress(stage, step, total))

    task = asyncio.ensure_future(start(on_step))
    task.add_done_callback(lambda _: items.put_nowait(done))
    try:
        while (item := await items.get()) is not done:
            yield item
        yield task.result()
    finally:
        if not task.done():
            stop.set()
            task.cancel()

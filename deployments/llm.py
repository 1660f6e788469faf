"""LLM chat as a Ray Serve deployment: dynamic batching for whole answers, token streaming.

Non-streaming requests go through `@serve.batch`: concurrent callers are merged into one
batched decode (one forward pass per step for all of them), and each gets its own answer.
Batch size and wait come from the YAML's `user_config`, so they can be tuned on a live
deployment without restarting it. Streaming requests decode alone and yield text deltas.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Iterator

from ray import serve

from genserve import metrics
from genserve.pipelines.llm import ChatParams, ChatResult


@serve.deployment(ray_actor_options={"num_gpus": 0.5}, max_ongoing_requests=32)
class LLMChat:
    def __init__(self, model_id: str, revision: str | None = None, dtype: str = "auto",
                 max_context: int | None = None):
        from genserve.pipelines.llm import LLMPipeline

        self.pipeline = LLMPipeline(model_id, revision=revision, dtype=dtype,
                                    max_context=max_context)
        # Sizes of the batches actually run: the evidence that batching happens (and a metric).
        self.batch_sizes: deque[int] = deque(maxlen=1024)

    def reconfigure(self, config: dict) -> None:
        self._chat_batch.set_max_batch_size(int(config.get("max_batch_size", 8)))
        self._chat_batch.set_batch_wait_timeout_s(float(config.get("batch_wait_timeout_s", 0.05)))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def _chat_batch(self, params: list[ChatParams]) -> list[ChatResult]:
        self.batch_sizes.append(len(params))
        # The decode loop is blocking torch work: run it off the replica's event loop so
        # health checks and new arrivals (the next batch) are not starved.
        started = time.perf_counter()
        results = await asyncio.to_thread(self.pipeline.chat_batch, params)
        # One series per batch: the GPU time is the batch's, however many answers it held.
        metrics.observe_inference("chat", "LLMChat", time.perf_counter() - started)
        return results

    async def chat(self, params: ChatParams) -> ChatResult:
        # Checked before joining a batch: one bad request must not fail its batch-mates.
        self.pipeline.check_inputs(params)
        return await self._chat_batch(params)

    def check_inputs(self, params: ChatParams) -> int:
        return self.pipeline.check_inputs(params)

    def stream(self, params: ChatParams) -> Iterator[str]:
        """Text deltas; call with ``handle.options(stream=True)``."""
        yield from self.pipeline.stream(params)

    def stream_events(self, params: ChatParams) -> Iterator[str | ChatResult]:
        """Text deltas, then the final `ChatResult` (finish reason, usage)."""
        yield from self.pipeline.stream_events(params)

    def batch_stats(self) -> dict:
        return {"batch_sizes": list(self.batch_sizes)}

    def check_health(self) -> None:
        self.pipeline.check_health()

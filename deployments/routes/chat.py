"""LLM routes: native `POST /v1/chat` and the OpenAI-compatible `/v1/chat/completions` and
`/v1/models`. Streaming answers are Server-Sent Events fed by a streaming handle call, so
tokens reach the client as the replica produces them.

Native SSE: ``data: {"text": "<delta>"}`` per delta, then ``event: done`` with the finish
reason, usage, seed and model (``event: error`` if generation fails after headers went out).
"""

from __future__ import annotations

import json
from typing import AsyncIterator

from fastapi.responses import StreamingResponse
from ray.serve.handle import DeploymentHandle

from genserve.errors import NotFound

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _sse(data: dict, event: str | None = None) -> str:
    return (f"event: {event}\n" if event else "") + f"data: {json.dumps(data)}\n\n"


def _events(llm: DeploymentHandle, params) -> AsyncIterator:
    """Text deltas, then the final `ChatResult`, as the replica produces them."""
    return llm.options(stream=True).stream_events.remote(params)


async def _checked(llm: DeploymentHandle, params) -> None:
    # Validate (context length, etc.) before the 200 and the event stream start, so a bad
    # request is still a plain 4xx rather than an in-band error event.
    await llm.check_inputs.remote(params)


async def chat(llm: DeploymentHandle, name: str, body):
    from genserve.schemas.llm import ChatResponse, Usage

    params = body.to_params()
    if not body.stream:
        return ChatResponse.from_result(await llm.chat.remote(params), name)
    await _checked(llm, params)

    async def stream():
        try:
            async for item in _events(llm, params):
                if isinstance(item, str):
                    if item:
                        yield _sse({"text": item})
                else:
                    yield _sse({"finish_reason": item.finish_reason,
                                "usage": Usage.of(item).model_dump(), "seed": item.seed,
                                "model": name}, event="done")
        except Exception as exc:  # headers are sent: report in-band, the SSE way
            yield _sse({"detail": getattr(exc, "message", str(exc))}, event="error")

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)


def check_model(name: str, requested: str | None) -> None:
    if requested and requested != name:
        raise NotFound(f"model {requested!r} is not served here; available: [{name!r}]",
                       field="model")


async def chat_completions(llm: DeploymentHandle, name: str, body):
    from genserve.schemas.llm import ChatCompletion, CompletionStream

    check_model(name, body.model)
    params = body.to_params()
    if not body.stream:
        return ChatCompletion.from_result(await llm.chat.remote(params), name)
    await _checked(llm, params)
    formatter = CompletionStream(name, body.include_usage)

    async def stream():
        yield formatter.start()
        try:
            async for item in _events(llm, params):
                for chunk in formatter.event(item):
                    yield chunk
        except Exception as exc:
            yield _sse({"error": {"message": getattr(exc, "message", str(exc)),
                                  "type": "server_error"}})
        yield formatter.end()

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)


def models(name: str):
    from genserve.schemas.llm import ModelCard, ModelList

    return ModelList(data=[ModelCard(id=name)])

"""Pure-ASGI middleware for the ingress: body size limit, API keys, usage log.

Pure ASGI (not `BaseHTTPMiddleware`) so streaming responses pass through untouched. Settings
are read from ``scope["app"].state``, which the ingress fills in its constructor: the FastAPI
app is a module-level object, but keys and the database belong to the replica.
"""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import datetime, timezone

import anyio

from genserve import metrics
from genserve.usage import UsageNote, UsageRecord, current_note, pipeline_for_path

log = logging.getLogger(__name__)
_SAFE_ID = re.compile(r"[^A-Za-z0-9._:-]")


async def _send_json(send, status: int, body: dict, headers: list | None = None) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": payload})


class BodyLimitMiddleware:
    """413 for bodies over ``state.max_body_bytes``.

    With a Content-Length the check happens before anything is read (the HTTP server enforces
    the framing, so the body cannot be longer). Without one (chunked upload) the body is read
    here up to the limit and replayed to the app: the framework's own body reader would turn
    an error raised mid-read into a generic 400.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = scope["app"].state.max_body_bytes
        too_large = {"detail": f"request body is larger than the limit of {limit} bytes"}
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await _send_json(send, 400, {"detail": "invalid Content-Length"})
            if int(length) > limit:
                return await _send_json(send, 413, too_large)
            return await self.app(scope, receive, send)
        if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return await _send_json(send, 413, too_large)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class ApiKeyMiddleware:
    """401 unless the request carries a valid key; ``state.public_paths`` are exempt."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = scope["app"].state
        path = scope["path"]
        public_get = scope["method"] in ("GET", "HEAD") and \
            path.startswith(getattr(state, "public_get_prefixes", ()))
        if path in state.public_paths or public_get or scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        if state.api_keys.check(header):
            return await self.app(scope, receive, send)
        if not state.api_keys.configured and not state.api_keys.disabled:
            detail = ("no API key is configured on this server: set GENSERVE_API_KEY or "
                      "GENSERVE_API_KEY_FILE for the Serve replicas")
        else:
            detail = "missing or invalid API key: send `Authorization: Key <key>` or `Bearer <key>`"
        await _send_json(send, 401, {"detail": detail}, [(b"www-authenticate", b"Key")])


class UsageLogMiddleware:
    """Records every request (book's fields: request id, time, endpoint, client, latency,
    status, plus the pipeline, model, LoRA and GPU-seconds a route notes in
    `genserve.usage.current_note`) in ``state.usage`` after the response has been sent, and
    its latency in the ``genserve_http_request_seconds`` metric."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started_at = datetime.now(timezone.utc)
        t0 = time.perf_counter()
        status = 500
        usage_note = UsageNote(pipeline=pipeline_for_path(scope["path"]))
        token = current_note.set(usage_note)

        async def recording_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            current_note.reset(token)
            latency = time.perf_counter() - t0
            metrics.http_request(usage_note.pipeline, status, latency)
            headers = dict(scope["headers"])
            # Ray Serve's proxy puts its request id on the request; clients may send their own,
            # so keep it to safe characters before it reaches the database.
            request_id = _SAFE_ID.sub("", headers.get(b"x-request-id", b"").decode("latin-1"))[:64]
            client = scope.get("client")
            record = UsageRecord(
                request_id=request_id or "-", started_at=started_at,
                method=scope["method"], endpoint=scope["path"][:512],
                client=client[0] if client else None,
                latency_s=round(latency, 6), status_code=status,
                pipeline=usage_note.pipeline, model=usage_note.model,
                lora_id=usage_note.lora_id,
                gpu_seconds=None if usage_note.gpu_seconds is None
                else round(usage_note.gpu_seconds, 6))
            try:
                await anyio.to_thread.run_sync(scope["app"].state.usage.record, record)
            except Exception:  # the log must never turn a served request into an error
                log.exception("could not write usage record %s", record.request_id)

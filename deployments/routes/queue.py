"""The queue API in fal's wire protocol: submit, status (+ SSE stream), result, cancel, and the
synchronous run path built on them.

The ingress only reads and writes the job store; `deployments.worker.JobWorker` replicas run the
jobs. So a submit returns as soon as its row is committed, and any ingress replica can answer for
any job.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from genserve.endpoints import APP_OWNER, EndpointSpec, endpoint
from genserve.errors import InvalidInput, NotFound
from genserve.jobs.store import (
    CANCELLED,
    COMPLETED,
    IN_QUEUE,
    OK,
    PRIORITIES,
    IdempotencyConflict,
    Job,
    JobStore,
    NewJob,
)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
TIMEOUT_HEADER = "x-fal-request-timeout"
PRIORITY_HEADER = "x-fal-queue-priority"
MAX_IDEMPOTENCY_KEY = 255
STREAM_POLL_S = 0.25
NUDGE_EVERY_S = 0.02


@dataclass
class Queue:
    store: JobStore
    files: Any     # genserve.files.FileService
    fetcher: Any   # genserve.fetch.Fetcher (webhook URLs pass its SSRF check)
    worker: Any = None  # the JobWorker handle, to wake one up after a submit

    last_nudge: float = 0.0

    def nudge(self) -> None:
        """Tell a worker a job is waiting; fire and forget (the workers poll anyway), and at
        most every NUDGE_EVERY_S: in a burst the worker is awake already."""
        now = time.monotonic()
        if self.worker is None or now - self.last_nudge < NUDGE_EVERY_S:
            return
        self.last_nudge = now

        async def send():
            try:
                await asyncio.wait_for(self.worker.wake.remote(), 5)
            except Exception:  # a hint only: never fail or slow a submit over it
                pass

        asyncio.ensure_future(send())


def app_name(owner: str, name: str) -> str:
    """The endpoint of the app id ``owner/name`` in a queue URL (only ours: genserve/…)."""
    if owner != APP_OWNER:
        raise NotFound(f"unknown application {owner}/{name}; ours are {APP_OWNER}/<endpoint>",
                       field="endpoint")
    return name


def _owner(request: Request) -> str:
    """Who submitted: a fingerprint of the API key (never the key), scoping idempotency keys."""
    auth = request.headers.get("authorization", "")
    return hashlib.sha256(auth.partition(" ")[2].strip().encode()).hexdigest()[:32]


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _urls(base: str, job: Job) -> dict:
    root = f"{base}/queue/{APP_OWNER}/{job.endpoint}/requests/{job.id}"
    return {"response_url": root, "status_url": f"{root}/status",
            "cancel_url": f"{root}/cancel"}


def validate_input(spec: EndpointSpec, raw: Any) -> tuple[dict, bool]:
    """(the input as stored, sync_mode) after checking it against the endpoint's schema, so a
    bad request is a 422 now rather than a failed job later."""
    if not isinstance(raw, dict):
        raise RequestValidationError([{"loc": ("body",), "msg": "the input must be a JSON "
                                       "object", "type": "model_attributes_type"}])
    raw = dict(raw)
    sync_mode = raw.pop("sync_mode", False)
    if not isinstance(sync_mode, bool):
        raise RequestValidationError([{"loc": ("body", "sync_mode"), "msg": "must be a boolean",
                                       "type": "bool_type", "input": sync_mode}])
    try:
        body = spec.request.model_validate(raw)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
    if spec.kind == "training":
        from genserve.jobs.train_job import check_remote_input

        check_remote_input(body)
    return raw, sync_mode


def _start_deadline(request: Request) -> float | None:
    value = request.headers.get(TIMEOUT_HEADER)
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidInput(f"header `X-Fal-Request-Timeout` must be a positive number of "
                           f"seconds, got {value[:40]!r}", field="X-Fal-Request-Timeout")
    return time.time() + seconds


def _priority(request: Request) -> int:
    value = request.headers.get(PRIORITY_HEADER, "normal")
    if value not in PRIORITIES:
        raise InvalidInput(f"header `X-Fal-Queue-Priority` must be one of {list(PRIORITIES)}, "
                           f"got {value[:40]!r}", field="X-Fal-Queue-Priority")
    return PRIORITIES[value]


async def submit(q: Queue, name: str, request: Request, handles) -> JSONResponse:
    spec = endpoint(name)
    if spec.kind == "inference":
        handles.need(spec)
    try:
        raw = json.loads(await request.body() or b"null")
    except ValueError:
        raise InvalidInput("the request body is not valid JSON", field="body") from None
    stored, sync_mode = validate_input(spec, raw)
    webhook = request.query_params.get("fal_webhook")
    if webhook is not None:
        # Checked now (a 422 for the submitter) and again, pinned, when it is delivered.
        await asyncio.to_thread(q.fetcher.check, webhook, "fal_webhook")
    key = request.headers.get("idempotency-key")
    if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        raise InvalidInput(f"header `Idempotency-Key` must be 1 to {MAX_IDEMPOTENCY_KEY} "
                           "characters", field="Idempotency-Key")
    base = _base_url(request)
    new = NewJob(id=str(uuid.uuid4()), endpoint=spec.name, kind=spec.kind, input=stored,
                 owner=_owner(request), sync_mode=sync_mode, idempotency_key=key,
                 webhook_url=webhook, base_url=base, priority=_priority(request),
                 start_deadline=_start_deadline(request))
    try:
        job, created = await asyncio.to_thread(q.store.submit, new)
    except IdempotencyConflict:
        raise InvalidInput("header `Idempotency-Key` was already used with a different "
                           "request body", field="Idempotency-Key") from None
    if created:
        q.nudge()
    position = await asyncio.to_thread(q.store.queue_position, job) \
        if job.status == IN_QUEUE else 0
    return JSONResponse({"request_id": job.id, **_urls(base, job), "queue_position": position},
                        headers={"x-fal-request-id": job.id})


async def _job(q: Queue, request_id: str, name: str | None) -> Job:
    job = await asyncio.to_thread(q.store.get, request_id)
    if job is None or (name is not None and endpoint(name).name != job.endpoint):
        raise NotFound(f"no request {request_id!r}" + (f" for endpoint {name!r}" if name else ""),
                       field="request_id")
    return job


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat()


async def status_of(q: Queue, job: Job, logs: bool, base: str) -> dict:
    lines = None
    if logs:
        lines = [{"message": line.message, "level": line.level, "source": "USER",
                  "timestamp": _iso(line.ts)}
                 for line in await asyncio.to_thread(q.store.logs, job.id)]
    answer = {"status": job.status, "request_id": job.id,
              "response_url": _urls(base, job)["response_url"], "logs": lines}
    if job.status == IN_QUEUE:
        answer["queue_position"] = await asyncio.to_thread(q.store.queue_position, job)
    elif job.status == COMPLETED:
        answer.update(metrics=job.metrics, error=job.error, error_type=job.error_type)
    return answer


async def status(q: Queue, request_id: str, request: Request, name: str | None = None) -> dict:
    job = await _job(q, request_id, name)
    return await status_of(q, job, _flag(request, "logs"), _base_url(request))


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "0").lower() in ("1", "true", "yes")


async def status_stream(q: Queue, request_id: str, request: Request,
                        name: str | None = None) -> StreamingResponse:
    """Server-sent events: the status each time it changes (state, position or logs), ending
    after COMPLETED."""
    job = await _job(q, request_id, name)
    logs, base = _flag(request, "logs"), _base_url(request)

    async def events():
        last = None
        current = job
        while True:
            answer = await status_of(q, current, logs, base)
            key = (answer["status"], answer.get("queue_position"),
                   len(answer["logs"] or ()))
            if key != last:
                last = key
                yield f"data: {json.dumps(answer)}\n\n"
            if current.status == COMPLETED:
                return
            await asyncio.sleep(STREAM_POLL_S)
            current = await asyncio.to_thread(q.store.get, request_id)

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


def _result_response(q: Queue, job: Job, base: str) -> JSONResponse:
    headers = {"x-fal-request-id": job.id}
    if job.status != COMPLETED:
        return JSONResponse({"detail": "request is still in progress",
                             "error_type": "request_in_progress"}, 400, headers=headers)
    if job.outcome == OK:
        # Only this job's own files get signed: a reference echoed from someone's input
        # must not become a link to another job's output.
        return JSONResponse(q.files.resolve(job.output, base, prefix=job.id), headers=headers)
    if job.outcome == CANCELLED:
        return JSONResponse({"detail": "request was cancelled",
                             "error_type": "request_cancelled"}, 400, headers=headers)
    if job.error_type == "request_timeout":
        headers["X-Fal-Request-Timeout-Type"] = "user"
    body = {"detail": job.error, "error_type": job.error_type}
    if isinstance(job.output, dict) and job.output.get("field"):
        body["field"] = job.output["field"]
    return JSONResponse(body, job.error_status or 500, headers=headers)


async def result(q: Queue, request_id: str, request: Request,
                 name: str | None = None) -> JSONResponse:
    job = await _job(q, request_id, name)
    return _result_response(q, job, _base_url(request))


async def cancel(q: Queue, request_id: str, name: str | None = None) -> JSONResponse:
    job = await asyncio.to_thread(q.store.get, request_id)
    if job is None or (name is not None and endpoint(name).name != job.endpoint):
        return JSONResponse({"status": "NOT_FOUND", "detail": f"no request {request_id!r}"},
                            404)
    outcome = await asyncio.to_thread(q.store.request_cancel, request_id)
    if outcome == "completed":
        return JSONResponse({"status": "ALREADY_COMPLETED"}, 400)
    return JSONResponse({"status": "CANCELLATION_REQUESTED"}, 202)


async def run(q: Queue, name: str, request: Request, handles) -> JSONResponse:
    """Submit, wait, answer: the synchronous path (fal's `run`) through the same queue, so it
    gets the same durability, backpressure and start timeout."""
    submitted = await submit(q, name, request, handles)
    request_id = json.loads(submitted.body)["request_id"]
    delay = 0.02
    while True:
        job = await asyncio.to_thread(q.store.get, request_id)
        if job.status == COMPLETED:
            return _result_response(q, job, _base_url(request))
        if await request.is_disconnected():
            # The job runs on (it is durable); the caller can still fetch it by id.
            return JSONResponse({"detail": "client went away", "request_id": request_id}, 499)
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.25)

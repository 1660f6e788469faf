"""What the sync and async clients share: configuration, typed statuses, errors, the retry
policy, and building requests / reading answers as plain functions (no I/O here), so the two
flavours stay thin wrappers that differ only in `await`."""

from __future__ import annotations

import email.utils
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import httpx

from genserve.client._sse import SSEEvent

DEFAULT_URL = "http://127.0.0.1:8000"
APP_OWNER = "genserve"
# Ordinary calls answer in milliseconds; `run` and streams get no read deadline (a job may
# queue and run for minutes), only this one for connecting and writing.
DEFAULT_TIMEOUT_S = 60.0
PRIORITIES = ("normal", "low")
IN_PROGRESS_ERROR = "request_in_progress"  # `result` of an unfinished job: not a failure


class GenserveClientError(Exception):
    """An error answer from the server (``status_code``, its ``detail``), or no answer at all
    (``status_code`` None: the server could not be reached).

    ``error_type`` names why a *job* has no output (``"request_cancelled"``, a pipeline error
    type): `job_failed` tells those apart from a bad call (unknown id, invalid input).
    """

    def __init__(self, status_code: int | None, detail: Any, error_type: str | None = None,
                 body: Any = None):
        self.status_code = status_code
        self.detail = detail
        self.error_type = error_type
        self.body = body
        super().__init__(self.message)

    @property
    def message(self) -> str:
        where = f"HTTP {self.status_code}" if self.status_code is not None else "no answer"
        return f"{where}: {_detail_text(self.detail)}"

    @property
    def job_failed(self) -> bool:
        """The job ended without output (failed, cancelled, timed out before starting), as
        opposed to a refused call (bad input, unknown id) or a job still running."""
        return self.error_type not in (None, IN_PROGRESS_ERROR)

    @property
    def in_progress(self) -> bool:
        return self.error_type == IN_PROGRESS_ERROR or self.detail == "request is still in progress"

    @property
    def cancelled(self) -> bool:
        return self.error_type == "request_cancelled"


def _detail_text(detail: Any) -> str:
    # FastAPI's 422 detail is a list of {loc, msg}; show "field: message" for each.
    if isinstance(detail, list):
        parts = []
        for d in detail:
            if isinstance(d, dict) and "msg" in d:
                loc = ".".join(str(p) for p in d.get("loc", ()) if p != "body")
                parts.append(f"{loc}: {d['msg']}" if loc else str(d["msg"]))
            else:
                parts.append(str(d))
        return "; ".join(parts)
    return str(detail)


def resolve_url(base_url: str | None) -> str:
    return (base_url or os.environ.get("GENSERVE_URL") or DEFAULT_URL).rstrip("/")


def tls_verify(verify: Any) -> Any:
    """httpx's ``verify``: True/False or an ``ssl.SSLContext`` as is; a CA bundle path (which
    httpx 0.28 deprecates) becomes a context trusting it."""
    if isinstance(verify, (str, os.PathLike)):
        import ssl

        path = Path(verify)
        if path.is_dir():
            return ssl.create_default_context(capath=str(path))
        return ssl.create_default_context(cafile=str(path))
    return verify


def resolve_key(key: str | None) -> str | None:
    """The explicit key, else ``GENSERVE_API_KEY`` / ``GENSERVE_KEY`` / the file named by
    ``GENSERVE_API_KEY_FILE``. The server accepts a comma-separated list; a client sends one."""
    if key is None:
        key = os.environ.get("GENSERVE_API_KEY") or os.environ.get("GENSERVE_KEY")
    if key is None and os.environ.get("GENSERVE_API_KEY_FILE"):
        key = Path(os.environ["GENSERVE_API_KEY_FILE"]).read_text()
    if key is None:
        return None
    return key.split(",")[0].strip() or None


def app_path(endpoint: str) -> str:
    """``sdxl`` or ``genserve/sdxl`` → ``genserve/sdxl`` (URL-quoted)."""
    name = endpoint.removeprefix(f"{APP_OWNER}/").strip("/")
    if not name or "/" in name:
        raise ValueError(f"endpoint must be a name like 'sdxl', got {endpoint!r}")
    return f"{APP_OWNER}/{quote(name, safe='')}"


def request_path(request_id: str, suffix: str = "") -> str:
    if not request_id or "/" in request_id:
        raise ValueError(f"request_id must be a non-empty id, got {request_id!r}")
    return f"/queue/requests/{quote(request_id, safe='')}{suffix}"


# -- statuses ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Log:
    message: str
    level: str = "INFO"
    source: str = "USER"
    timestamp: str | None = None


@dataclass(frozen=True)
class Status:
    """Base of the three states; ``status`` is the wire name."""

    status: ClassVar[str] = ""


@dataclass(frozen=True)
class Queued(Status):
    position: int
    status: ClassVar[str] = "IN_QUEUE"


@dataclass(frozen=True)
class InProgress(Status):
    logs: list[Log] | None = None
    status: ClassVar[str] = "IN_PROGRESS"


@dataclass(frozen=True)
class Completed(Status):
    logs: list[Log] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None
    status: ClassVar[str] = "COMPLETED"


def parse_status(data: dict[str, Any]) -> Status:
    """A status JSON (poll or stream event) → `Queued` / `InProgress` / `Completed`."""
    state = data.get("status")
    logs = None
    if data.get("logs") is not None:
        logs = [Log(message=str(entry.get("message", "")), level=entry.get("level", "INFO"),
                    source=entry.get("source", "USER"), timestamp=entry.get("timestamp"))
                for entry in data["logs"]]
    if state == "IN_QUEUE":
        return Queued(position=int(data.get("queue_position") or 0))
    if state == "IN_PROGRESS":
        return InProgress(logs=logs)
    if state == "COMPLETED":
        return Completed(logs=logs, metrics=data.get("metrics") or {}, error=data.get("error"),
                         error_type=data.get("error_type"))
    raise GenserveClientError(None, f"unknown status {state!r} in {data!r}")


def status_dict(status: Status) -> dict[str, Any]:
    """A status back as wire-style JSON (for printing)."""
    out: dict[str, Any] = {"status": status.status}
    if isinstance(status, Queued):
        out["queue_position"] = status.position
    else:
        logs = status.logs  # type: ignore[attr-defined]
        out["logs"] = None if logs is None else [vars(log) for log in logs]
    if isinstance(status, Completed):
        out.update(metrics=status.metrics, error=status.error, error_type=status.error_type)
    return out


def event_status(event: SSEEvent) -> Status:
    """One `text/event-stream` event of the status route → its status."""
    try:
        data = json.loads(event.data)
    except ValueError as exc:
        raise GenserveClientError(None, f"bad status event {event.data[:200]!r}") from exc
    if event.event == "error":
        detail = data.get("detail", data) if isinstance(data, dict) else data
        raise GenserveClientError(None, detail)
    return parse_status(data)


# -- requests and answers ------------------------------------------------------------------


@dataclass(frozen=True)
class Submitted:
    request_id: str
    response_url: str | None = None
    status_url: str | None = None
    cancel_url: str | None = None
    queue_position: int | None = None


def submit_request(arguments: dict[str, Any], *, webhook_url: str | None,
                   idempotency_key: str | None, start_timeout: float | None,
                   priority: str | None, sync_mode: bool) -> dict[str, Any]:
    """The keyword arguments for ``httpx.Client.request`` of a submit (minus method/URL).

    Every submit carries an ``Idempotency-Key`` (generated when not given): a retried POST then
    returns the same job instead of starting a second one.
    """
    if not isinstance(arguments, dict):
        raise TypeError(f"arguments must be a dict, got {type(arguments).__name__}")
    if priority is not None and priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {PRIORITIES}, got {priority!r}")
    if start_timeout is not None and not start_timeout > 0:
        raise ValueError(f"start_timeout must be > 0 seconds, got {start_timeout!r}")
    headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
    if start_timeout is not None:
        headers["X-Fal-Request-Timeout"] = f"{start_timeout:g}"
    if priority is not None:
        headers["X-Fal-Queue-Priority"] = priority
    body = {**arguments, "sync_mode": True} if sync_mode else arguments
    params = {"fal_webhook": webhook_url} if webhook_url else None
    return {"json": body, "headers": headers, "params": params}


def error_from(response: httpx.Response) -> GenserveClientError:
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if isinstance(body, dict):
        # The 422 handler adds a one-line `message`; prefer it to the raw list.
        detail = body.get("message") or body.get("detail") or body.get("status") or body
        return GenserveClientError(response.status_code, detail, body.get("error_type"), body)
    return GenserveClientError(response.status_code, body or response.reason_phrase, None, body)


def read_json(response: httpx.Response) -> Any:
    if response.is_success:
        return response.json()
    raise error_from(response)


def read_submitted(response: httpx.Response) -> Submitted:
    data = read_json(response)
    return Submitted(request_id=data["request_id"], response_url=data.get("response_url"),
                     status_url=data.get("status_url"), cancel_url=data.get("cancel_url"),
                     queue_position=data.get("queue_position"))


def read_cancel(response: httpx.Response) -> bool:
    """202 → True (cancellation requested); 400 ALREADY_COMPLETED → False; else an error."""
    if response.status_code == 202 or response.is_success:
        return True
    if response.status_code == 400:
        try:
            if response.json().get("status") == "ALREADY_COMPLETED":
                return False
        except (ValueError, AttributeError):
            pass
    raise error_from(response)


def auth_headers(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Key {key}"} if key else {}


def same_origin(url: str, base_url: str) -> bool:
    """Whether ``url`` points at our server (so the API key may go with it). Presigned S3 URLs
    must not get it: S3 refuses a request with two credentials."""
    a, b = urlsplit(url), urlsplit(base_url)
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)


# -- retries -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry: connection errors, and 429/503 answers (honouring
    ``Retry-After``), for calls that are safe to repeat."""

    max_retries: int = 3
    backoff_s: float = 0.5
    max_delay_s: float = 30.0
    statuses: frozenset[int] = frozenset({429, 503})

    def delay(self, attempt: int, response: httpx.Response | None = None) -> float:
        wait = self.backoff_s * 2 ** attempt
        if response is not None:
            after = retry_after_s(response.headers.get("Retry-After"))
            if after is not None:
                wait = after
        return min(max(wait, 0.0), self.max_delay_s)

    def retry_error(self, exc: httpx.TransportError, attempt: int, idempotent: bool) -> bool:
        """Connection never made: nothing was sent, always safe. Anything later (read timeout,
        dropped connection) only for idempotent calls."""
        if attempt >= self.max_retries:
            return False
        return idempotent or isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))

    def retry_response(self, response: httpx.Response, attempt: int, idempotent: bool) -> bool:
        return idempotent and attempt < self.max_retries and response.status_code in self.statuses


def retry_after_s(value: str | None) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when.timestamp() - time.time()


def unreachable(url: str, exc: httpx.TransportError) -> GenserveClientError:
    return GenserveClientError(None, f"cannot reach {url}: {type(exc).__name__}: {exc}")


def usage_params(since: Any = None, until: Any = None, endpoint: str | None = None,
                 pipeline: str | None = None, status: int | None = None,
                 success: bool | None = None, limit: int | None = None) -> dict[str, str]:
    """``GET /usage`` query parameters; datetimes as ISO 8601, unset filters left out."""
    values = {"since": since, "until": until, "endpoint": endpoint, "pipeline": pipeline,
              "status": status, "success": success, "limit": limit}
    params = {}
    for key, value in values.items():
        if value is None:
            continue
        if hasattr(value, "isoformat"):
            value = value.isoformat()
        elif isinstance(value, bool):
            value = "true" if value else "false"
        params[key] = str(value)
    return params

"""Exception → HTTP mapping; the only place that knows status codes.

Validation errors come back as 422 with FastAPI's ``detail`` list (each entry naming the field
via ``loc``) plus a one-line ``message``; the offending input is echoed only when short, so a
100 000-character prompt is not sent back.
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from genserve.errors import GenserveError
from genserve.schemas.common import FieldError

log = logging.getLogger(__name__)
RETRY_AFTER_S = "2"


def _error_entry(err: dict) -> dict:
    loc = list(err.get("loc", ()))
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        loc = [*loc, cause.field]
    msg = str(cause) if isinstance(cause, FieldError) else err.get("msg", "")
    entry = {"loc": loc, "msg": msg, "type": err.get("type", "value_error")}
    ctx = {k: v for k, v in (err.get("ctx") or {}).items() if k != "error"}
    if ctx:
        entry["ctx"] = {k: v if isinstance(v, (int, str, bool)) else str(v)
                        for k, v in ctx.items()}
    raw = err.get("input")
    # Echo short scalars only; NaN/inf are not JSON and would turn a 422 into a 500.
    if isinstance(raw, bool) or (isinstance(raw, int) and abs(raw) < 2**63) \
            or (isinstance(raw, float) and math.isfinite(raw)) \
            or (isinstance(raw, str) and len(raw) <= 200):
        entry["input"] = raw
    return entry


def _field_name(loc: list) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    details = [_error_entry(e) for e in exc.errors()]
    message = "; ".join(f"{_field_name(d['loc'])}: {d['msg']}" for d in details)
    return JSONResponse({"detail": details, "message": message}, status_code=422)


async def genserve_error(request: Request, exc: GenserveError) -> JSONResponse:
    body = {"detail": exc.message}
    if exc.field:
        body["field"] = exc.field
    headers = {"Retry-After": RETRY_AFTER_S} if exc.status_code == 503 else None
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


async def overloaded(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": f"server overloaded, retry later ({type(exc).__name__})"},
                        status_code=503, headers={"Retry-After": RETRY_AFTER_S})


async def unavailable(request: Request, exc: Exception) -> JSONResponse:
    # A pipeline whose replicas cannot start (Serve gave up on its constructor): the operator
    # must act, but the API stays up and says which deployment is down.
    return JSONResponse({"detail": f"{getattr(exc, 'message', exc)} Retry later."},
                        status_code=503, headers={"Retry-After": RETRY_AFTER_S})


async def unexpected(request: Request, exc: Exception) -> JSONResponse:
    request_id = request.headers.get("x-request-id", "-")
    log.exception("unhandled error in request %s", request_id)
    return JSONResponse({"detail": f"internal error (request id {request_id})"}, status_code=500)


async def replica_lost(request: Request, exc: Exception) -> JSONResponse:
    # The replica serving this call died (killed, OOM, node lost); Serve is replacing it and
    # the same request succeeds on retry: a 503, not a 500.
    return JSONResponse({"detail": "a model replica stopped while serving this request; "
                                   f"retry ({type(exc).__name__})"},
                        status_code=503, headers={"Retry-After": RETRY_AFTER_S})


async def serve_error(request: Request, exc: Exception) -> JSONResponse:
    # Serve wraps an upstream replica's death (a DeploymentResponse passed to the next
    # deployment whose producer died) in RayServeException with the ActorDiedError as cause.
    from ray.exceptions import ActorUnavailableError, RayActorError

    cause = exc.__cause__
    if isinstance(cause, (RayActorError, ActorUnavailableError)):
        return await replica_lost(request, cause)
    return await unexpected(request, exc)


def install_overload(app: FastAPI) -> None:
    from ray.exceptions import ActorUnavailableError, RayActorError
    from ray.serve.exceptions import (BackPressureError, DeploymentUnavailableError,
                                      RayServeException)

    app.add_exception_handler(BackPressureError, overloaded)
    app.add_exception_handler(DeploymentUnavailableError, unavailable)
    app.add_exception_handler(RayActorError, replica_lost)
    app.add_exception_handler(ActorUnavailableError, replica_lost)
    app.add_exception_handler(RayServeException, serve_error)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(GenserveError, genserve_error)
    install_overload(app)
    app.add_exception_handler(Exception, unexpected)

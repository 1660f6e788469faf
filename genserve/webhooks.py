"""Signed webhook delivery: fal's result payload, signed the Standard Webhooks way.

When a queued request finishes, the worker POSTs ``payload(...)`` to the request's
``fal_webhook`` URL with ``signed_headers(...)``: ``webhook-id`` (the same on every retry, so
receivers can drop duplicates), ``webhook-timestamp`` (unix seconds of *this* attempt) and
``webhook-signature`` = ``v1,`` + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}")). See
https://www.standardwebhooks.com. ``deliver`` makes one attempt through ``Fetcher.post`` (SSRF
checks, no redirects); ``next_delay`` says whether and when to try again.

Secrets: ``whsec_<base64>`` (the Standard Webhooks form: the key is the decoded bytes) or any
other string (the key is its UTF-8 bytes). ``webhook_secret()`` always hands out the
``whsec_`` form of the deployment's key, so it can be pasted into any Standard Webhooks library
(``standardwebhooks``, ``svix``) as well as into ``verify`` here; both forms of one key sign
alike.

A receiver (FastAPI shown) verifies the *raw* body before parsing it::

    import json
    from fastapi import FastAPI, HTTPException, Request
    from genserve.webhooks import WebhookVerificationError, verify

    app = FastAPI()

    @app.post("/fal/webhook")
    async def on_result(request: Request):
        body = await request.body()
        try:
            verify(SECRET, request.headers, body)   # SECRET: webhook_secret() of the server
        except WebhookVerificationError as exc:
            raise HTTPException(400, str(exc))
        event = json.loads(body)   # {"request_id", "status": "OK"|"ERROR", "payload", ...}
        ...                        # idempotent: a retry repeats request.headers["webhook-id"]
        return {"ok": True}
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from genserve.errors import InvalidInput
from genserve.fetch import Fetcher, Unreachable
from genserve.secrets import load_secret

SECRET_ENV = "GENSERVE_WEBHOOK_SECRET"
SECRET_FILE = "webhook_secret"
SECRET_PREFIX = "whsec_"
USER_AGENT = "genserve-webhooks"
TOLERANCE_S = 300  # the spec's suggested replay window, applied both ways (clock skew)

# Retry schedule: 1 s, 3 s, 9 s, … ×3 up to an hour between tries. With MAX_ATTEMPTS = 10 the
# last try is ~1.9 h after the first (before jitter), matching fal's "10 retries within 2 hours".
MAX_ATTEMPTS = 10  # the first try included
BACKOFF_BASE_S = 1.0
BACKOFF_FACTOR = 3.0
BACKOFF_CAP_S = 3600.0
# Statuses that mean "stop": 410 Gone is the receiver saying the endpoint is retired. Every
# other non-2xx (4xx included) is retried, as Standard Webhooks/Svix/Stripe do: receivers
# answer 400/401/404 during deploys and misconfigurations they then fix.
FINAL_STATUSES = frozenset({410})


class WebhookVerificationError(Exception):
    """The request is not a genuine, fresh webhook from this server."""


# --- secrets and signatures -----------------------------------------------------------------

def webhook_secret() -> str:
    """This deployment's signing secret in ``whsec_`` form: ``$GENSERVE_WEBHOOK_SECRET``, else
    one generated once into the state directory. A raw (non-``whsec_``) value is re-encoded, not
    changed: its UTF-8 bytes stay the key."""
    return as_whsec(load_secret(SECRET_ENV, SECRET_FILE))


def secret_key(secret: str) -> bytes:
    """The HMAC key: base64-decoded after ``whsec_``, else the string's UTF-8 bytes.

    >>> secret_key("whsec_c2VjcmV0") == secret_key("secret") == b"secret"
    True
    """
    if not secret:
        raise ValueError("the webhook secret is empty")
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
        except binascii.Error:
            raise ValueError("the webhook secret starts with `whsec_` but the rest is not "
                             "base64") from None
    return secret.encode()


def as_whsec(secret: str) -> str:
    """The ``whsec_<base64>`` spelling of ``secret``'s key (unchanged if already so)."""
    return SECRET_PREFIX + base64.b64encode(secret_key(secret)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256>`` over ``f"{msg_id}.{timestamp}."`` + body."""
    mac = hmac.new(secret_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def signed_headers(secret: str, msg_id: str, body: bytes,
                   now: float | None = None) -> dict[str, str]:
    """Headers for one delivery attempt, timestamped ``now`` (default: the current time)."""
    timestamp = int(time.time() if now is None else now)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def verify(secret: str, headers: Mapping[str, str], body: bytes | str,
           tolerance_s: float = TOLERANCE_S, now: float | None = None) -> None:
    """Raise ``WebhookVerificationError`` unless ``body`` carries a valid ``v1`` signature by
    ``secret`` and a timestamp within ``tolerance_s`` of ``now`` (either side). ``headers``:
    any mapping, names in any case; ``webhook-signature`` may list several space-separated
    signatures (key rotation), one matching is enough."""
    lower = {k.lower(): v for k, v in headers.items()}
    missing = [h for h in ("webhook-id", "webhook-timestamp", "webhook-signature")
               if not lower.get(h)]
    if missing:
        raise WebhookVerificationError(f"missing header(s): {', '.join(missing)}")
    try:
        timestamp = int(lower["webhook-timestamp"])
    except ValueError:
        raise WebhookVerificationError(f"`webhook-timestamp` is not an integer: "
                                       f"{lower['webhook-timestamp']!r}") from None
    now = time.time() if now is None else now
    if timestamp < now - tolerance_s:
        raise WebhookVerificationError(f"timestamp {timestamp} is more than {tolerance_s:.0f}s "
                                       f"old (now {now:.0f})")
    if timestamp > now + tolerance_s:
        raise WebhookVerificationError(f"timestamp {timestamp} is more than {tolerance_s:.0f}s "
                                       f"in the future (now {now:.0f})")
    body = body.encode() if isinstance(body, str) else body
    expected = sign(secret, lower["webhook-id"], timestamp, body).partition(",")[2].encode()
    for candidate in lower["webhook-signature"].split():
        version, _, signature = candidate.partition(",")
        # compare_digest: no timing side channel on how many leading bytes matched.
        if version == "v1" and hmac.compare_digest(signature.encode(), expected):
            return
    raise WebhookVerificationError("no `v1` signature matches the body")


# --- the payload ----------------------------------------------------------------------------

def payload(request_id: str, *, output: Any = None, error: Any = None,
            error_status: int | None = None) -> bytes:
    """fal's webhook body, compact JSON.

    Success (``error`` and ``error_status`` None):
    ``{"request_id", "gateway_request_id", "status": "OK", "payload": output}``.
    Failure: ``"status": "ERROR"``, ``"payload": {"detail": error}`` and ``"error"``: fal's
    ``"Invalid status code: <error_status>"`` when the status is known, else the error text.
    If the payload is not JSON-serialisable (bytes, NaN, …), ``"payload"`` is null and
    ``"payload_error"`` says why, as fal does.

    >>> payload("r1", output={"seed": 1})
    b'{"request_id":"r1","gateway_request_id":"r1","status":"OK","payload":{"seed":1}}'
    """
    failed = error is not None or error_status is not None
    head: dict[str, Any] = {"request_id": request_id, "gateway_request_id": request_id,
                            "status": "ERROR" if failed else "OK"}
    if failed:
        head["error"] = (f"Invalid status code: {error_status}" if error_status is not None
                         else error if isinstance(error, str) else "request failed")
    try:
        return _encode({**head, "payload": {"detail": error} if failed else output})
    except (TypeError, ValueError) as exc:
        return _encode({**head, "payload": None, "payload_error":
                        f"the result is not JSON serializable ({exc}); fetch it from the "
                        f"request's response_url instead"})


def _encode(document: dict) -> bytes:
    # allow_nan=False: NaN/Infinity are not JSON and would break strict receivers.
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()


# --- delivery and retries -------------------------------------------------------------------

@dataclass(frozen=True)
class Delivery:
    """The outcome of one attempt. ``status``: the receiver's HTTP status, None when none came
    back. ``retryable``: whether another attempt could succeed."""

    ok: bool
    status: int | None
    error: str | None
    retryable: bool


def deliver(url: str, body: bytes, msg_id: str, secret: str, fetcher: Fetcher, *,
            now: float | None = None, timeout_s: float | None = None) -> Delivery:
    """One signed POST of ``body`` to ``url``. Never raises for the receiver's faults.

    2xx → ok. Refused URL (non-public address, bad scheme) → failed for good. Network error,
    timeout, DNS failure → retryable. Any other status → retryable except 410 Gone; a 3xx is
    a failure too (redirects are not followed: the new location is unchecked).

    >>> d = deliver("https://hooks.example.com/fal", payload("r1", output={}), "r1",
    ...             webhook_secret(), Fetcher())                      # doctest: +SKIP
    >>> d.ok, d.status                                                # doctest: +SKIP
    (True, 200)
    """
    headers = signed_headers(secret, msg_id, body, now)
    try:
        status, answer = fetcher.post(url, body, headers, "webhook", timeout_s)
    except Unreachable as exc:  # before InvalidInput: Unresolvable is both
        return Delivery(False, None, str(exc), retryable=True)
    except InvalidInput as exc:
        return Delivery(False, None, f"refused: {exc.message}", retryable=False)
    if 200 <= status < 300:
        return Delivery(True, status, None, retryable=False)
    error = f"receiver answered HTTP {status}"
    if 300 <= status < 400:
        error += " (redirects are not followed; use the final URL as fal_webhook)"
    if answer.strip():
        error += f": {answer.strip()[:200]}"
    return Delivery(False, status, error, retryable=status not in FINAL_STATUSES)


def backoff(attempt: int, *, base_s: float = BACKOFF_BASE_S, factor: float = BACKOFF_FACTOR,
            cap_s: float = BACKOFF_CAP_S, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (1 = the first retry):
    ``min(cap_s, base_s * factor**(attempt-1))`` scaled by a random 0.75–1.0, so many failed
    deliveries to one receiver do not come back in lockstep, and the cap stays a maximum."""
    if attempt < 1:
        raise ValueError(f"`attempt` counts retries from 1, got {attempt}")
    # The exponent is bounded because float powers overflow (3.0**1000 raises); by 64 the
    # cap has long been reached for any sensible base and factor.
    nominal = min(cap_s, base_s * factor ** min(attempt - 1, 64))
    return nominal * (rng or random).uniform(0.75, 1.0)


def next_delay(delivery: Delivery, attempts_made: int, *, max_attempts: int = MAX_ATTEMPTS,
               **backoff_kw: Any) -> float | None:
    """Seconds until the next attempt, or None to stop (delivered, not retryable, or
    ``max_attempts`` tries made). ``backoff_kw`` go to ``backoff``."""
    if delivery.ok or not delivery.retryable or attempts_made >= max_attempts:
        return None
    return backoff(attempts_made, **backoff_kw)

"""Helpers for `tests/test_fuzz.py`: draw schemathesis cases, keep them cheap and loopback-only,
send them, and describe every failure with the request that caused it.

Cases are drawn first and sent afterwards (not inside `@given`), so a failure neither stops the
run nor triggers shrinking: every failing case of an operation is collected and reported.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlencode

import hypothesis
import jsonschema
import numpy as np
import requests
from hypothesis import HealthCheck, Phase
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.util import b64_png

# Where every URL the fuzzer makes up points instead: the discard port on loopback. The app's
# fetcher refuses it before connecting (loopback is not on its allow-list), and even a
# connection would stay on this machine (network rule, RELIABILITY.md).
LOOPBACK_URL = "http://127.0.0.1:9/x"
# Schemes that never leave the process: left as fuzzed, the server must refuse them itself.
LOCAL_SCHEMES = ("data:", "file:")

# Valid values of these fields are capped (`min(value, cap)`, still valid) and absent ones are
# set to the cap: their defaults or maxima cost real compute (SDXL defaults to 1024² × 50 steps,
# video to 14 frames of 1024×576, Shap-E to 64 steps, the LLM to 256 tokens) and the tiny
# models run on two CPU cores. Invalid values (wrong type, out of range, not a multiple of 8)
# are left alone, so a negative case stays negative.
CHEAP = {
    "height": 64, "width": 64,
    "num_inference_steps": 4,           # 4, not fewer: the PNDM scheduler needs 4
    "num_inference_steps_refiner": 4,
    "image_num_inference_steps": 2,     # text-to-video's first frame
    "num_images_per_prompt": 1,
    "num_frames": 2, "decode_chunk_size": 2,
    "frame_size": 16,                   # Shap-E's render size
    "max_new_tokens": 4, "max_tokens": 4, "max_completion_tokens": 4,
}
# Valid non-null values become null: every SDXL aspect-ratio bucket is about a megapixel, and
# it overrides height/width.
NULLED = ("aspect_ratio",)
# Text is capped in length (a prefix of a valid string stays valid: none has a pattern).
TEXT_CAP = {"text": 64}
# In valid cases, made-up (non-URL) strings in these fields become a real 64×64 PNG, so the
# image-to-image and image-to-video paths run too instead of stopping at "not an image".
IMAGE_FIELDS = ("seed_image", "image")
TINY_PNG = b64_png(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))


# -- drawing cases -------------------------------------------------------------------------------


def fuzzed(operation, mode: GenerationMode, n: int, seed: int, **fixed) -> list:
    """``n`` cases of ``operation`` in ``mode``, the same ones on every run (``seed``).
    ``fixed``: `as_strategy` arguments such as ``path_parameters``."""
    strategy = operation.as_strategy(generation_mode=mode, **fixed)
    drawn: list = []

    # Only the generate phase: no example database (reproducible in CI), no shrinking.
    @hypothesis.seed(seed)
    @hypothesis.settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
                         suppress_health_check=list(HealthCheck),
                         verbosity=hypothesis.Verbosity.quiet)
    @hypothesis.given(strategy)
    def draw(case):
        drawn.append(case)

    try:
        draw()
    except Unsatisfiable:
        pass  # no invalid input exists for this operation (e.g. only string path params)
    return drawn[:n]


def coverage(schema, operation, positive_limit: int, with_negative: bool = True) -> list:
    """Schemathesis' coverage phase (boundary values, wrong types, missing fields, malformed
    content types, undeclared methods): every negative case (if ``with_negative``), and
    ``positive_limit`` positive ones spread evenly, since each valid one runs a model."""
    modes = [GenerationMode.POSITIVE, *([GenerationMode.NEGATIVE] if with_negative else [])]
    config = schema.config.generation_for(operation=operation, phase="coverage")
    cases = list(schema.iter_coverage_cases(operation, generation_modes=modes,
                                            generation_config=config))
    positive = [c for c in cases if c.meta.generation.mode == GenerationMode.POSITIVE]
    negative = [c for c in cases if c.meta.generation.mode == GenerationMode.NEGATIVE]
    step = max(1, -(-len(positive) // positive_limit)) if positive_limit else 0
    return negative + (positive[::step][:positive_limit] if step else [])


# -- making a case safe to send --------------------------------------------------------------------


def _network_url(value: str) -> bool:
    """Anything with an authority part (`//host`), however odd, unless the scheme is local.
    Conservative: a prompt with "//" in it is rewritten too."""
    lowered = value.strip().lower()
    return not lowered.startswith(LOCAL_SCHEMES) and ("//" in lowered or "\\\\" in lowered)


def _loopback(value):
    if isinstance(value, str):
        return LOOPBACK_URL if _network_url(value) else value
    if isinstance(value, dict):
        return {k: _loopback(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_loopback(v) for v in value]
    return value


def loopback_only(case) -> None:
    """Point every URL-looking string in the body, query and headers at `LOOPBACK_URL`,
    whatever the field is called (image URLs, `fal_webhook`, `images_data_url`, …)."""
    if isinstance(case.body, (str, dict, list)):
        case.body = _loopback(case.body)
    if case.query:
        case.query = _loopback(dict(case.query))
    for name, value in list((case.headers or {}).items()):
        if isinstance(value, str) and _network_url(value):
            case.headers[name] = LOOPBACK_URL


def _valid(value, schema: dict | None) -> bool:
    return schema is not None and jsonschema.Draft202012Validator(schema).is_valid(value)


def cheap_fields(body: dict, properties: dict[str, dict], positive: bool = False) -> dict:
    """``body`` with the expensive fields of a request schema (``properties``) capped; see
    `CHEAP`. Only fields the schema has are touched (an added unknown field would make a valid
    case invalid). ``positive``: a valid case, whose image fields get a real image."""
    body = dict(body)
    for name, cap in CHEAP.items():
        if name not in properties:
            continue
        if name not in body:
            body[name] = cap
        elif _valid(body[name], properties[name]) and isinstance(body[name], (int, float)):
            body[name] = min(body[name], cap)
    for name in NULLED:
        if name in properties and body.get(name) is not None \
                and _valid(body[name], properties[name]):
            body[name] = None
    for name, cap in TEXT_CAP.items():
        value = body.get(name)
        if name in properties and isinstance(value, str) and _valid(value, properties[name]):
            body[name] = value[:cap]
    for name in IMAGE_FIELDS:
        value = body.get(name)
        if positive and name in properties and isinstance(value, str) and value != LOOPBACK_URL:
            body[name] = TINY_PNG
    return body


def is_positive(case) -> bool:
    return case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE


def make_cheap(case, properties: dict[str, dict]) -> None:
    if properties and isinstance(case.body, dict):
        case.body = cheap_fields(case.body, properties, is_positive(case))


# -- sending and judging --------------------------------------------------------------------------


def _header(headers, name: str) -> str | None:
    value = headers.get(name)  # schemathesis keeps a list per header
    return value[0] if isinstance(value, list) and value else value


def bad_status(status: int, headers) -> bool:
    """A 5xx the input caused. Not: 503 with Retry-After (backpressure, the client retries) and
    504 with `X-Fal-Request-Timeout-Type: user` (the job missed the start deadline the client
    set: fal's protocol)."""
    if status < 500:
        return False
    if status == 503 and _header(headers, "retry-after"):
        return False
    return not (status == 504 and _header(headers, "x-fal-request-timeout-type") == "user")


@dataclass
class Failure:
    label: str        # "POST /generate"
    source: str       # "coverage negative: prompt: Incorrect type", "fuzzing positive", …
    method: str
    url: str
    headers: dict
    body: str
    status: int | None
    response: str

    @property
    def kind(self) -> tuple:
        """Failures of one kind: same operation and status, same answer but for ids."""
        return self.label, self.status, re.sub(r"[0-9a-f-]{8,}", "…", self.response[:80])

    def __str__(self) -> str:
        return (f"{self.label} [{self.source}]\n  {self.method} {self.url}\n"
                f"  headers: {self.headers}\n  body: {self.body}\n"
                f"  -> {self.status}: {self.response}")


def _short(value, limit: int = 600) -> str:
    if value is None:
        return "-"
    text = value if isinstance(value, str) else json.dumps(value, default=repr)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


def _describe(case) -> str:
    meta = case.meta
    if meta is None:
        return "explicit"
    what = f"{meta.phase.name.value} {meta.generation.mode.value}"
    description = getattr(meta.phase.data, "description", None)
    return f"{what}: {description}" if description else what


@dataclass
class Sender:
    """Sends cases to the app and keeps what went wrong."""

    base_url: str
    session: requests.Session
    verify: str | bool  # the CA file of the app's self-signed certificate
    timeout_s: float
    headers: dict
    failures: list[Failure]
    # Known bugs: (reason, does this request trigger it?). A 5xx of a request that triggers
    # one is counted in `known_hits`, not failed: its own strict-xfail test tracks it.
    known: list[tuple[str, Callable]] = field(default_factory=list)
    known_hits: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)  # status (or "hang"/"broken") → count

    def send(self, case, *, label: str, properties: dict[str, dict] | None = None,
             headers: dict | None = None, judge: Callable | None = None):
        """Send one case (made cheap and loopback-only first); the response, or None."""
        source = _describe(case)
        loopback_only(case)
        make_cheap(case, properties or {})
        headers = self.headers if headers is None else headers
        try:
            response = case.call(base_url=self.base_url, session=self.session, headers=headers,
                                 timeout=self.timeout_s, verify=self.verify)
        except requests.Timeout:
            self.statuses["hang"] += 1
            self._fail(label, source, case, None, f"no answer within {self.timeout_s}s (hang)")
            return None
        except requests.RequestException as exc:
            self.statuses["broken"] += 1
            self._fail(label, source, case, None, f"connection broken: {exc!r}")
            return None
        self.statuses[response.status_code] += 1
        text = response.content.decode(errors="replace")
        if response.stream_cut_short:
            self._fail(label, source, case, response.status_code,
                       f"event stream still open after {self.timeout_s}s: {text}")
        elif bad_status(response.status_code, response.headers):
            reason = next((r for r, triggers in self.known if triggers(case)), None)
            if reason is None:
                self._fail(label, source, case, response.status_code, text)
            else:
                self.known_hits[reason] += 1
        elif judge is not None and (problem := judge(response)):
            self._fail(label, source, case, response.status_code, problem)
        return response

    def send_all(self, cases: Iterable, **kwargs) -> list:
        return [self.send(case, **kwargs) for case in cases]

    def _fail(self, label, source, case, status, text) -> None:
        request_headers = {k: v for k, v in (case.headers or {}).items()}
        path = case.formatted_path
        try:
            query = f"?{urlencode(case.query, doseq=True)}" if case.query else ""
        except TypeError:
            query = f"?{case.query!r}"
        body = None if type(case.body).__name__ == "NotSet" else case.body
        self.failures.append(Failure(label, source, case.method, f"{path}{query}",
                                     request_headers, _short(body), status, _short(text)))


def report(failures: list[Failure], per_kind: int = 3) -> str:
    """Every failure, grouped by kind, a few examples of each."""
    kinds: dict[tuple, list[Failure]] = {}
    for failure in failures:
        kinds.setdefault(failure.kind, []).append(failure)
    lines = [f"{len(failures)} failing case(s) of {len(kinds)} kind(s):"]
    for (label, status, _), group in kinds.items():
        lines.append(f"\n== {label} -> {status} ({len(group)} case(s))")
        lines.extend(str(f) for f in group[:per_kind])
    return "\n".join(lines)


def wait_until(predicate: Callable, timeout_s: float, every_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(every_s)
    return None

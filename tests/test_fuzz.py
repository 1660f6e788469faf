"""B13: schemathesis fuzzes every operation of the served OpenAPI; no input gets a 5xx.

Per operation of `/openapi.json` (`OPERATIONS`; `test_every_route_is_fuzzed` keeps the list
equal to what the app serves):

- schemathesis' coverage phase: every negative case (wrong types, out-of-range and
  near-boundary values, missing required fields, malformed Content-Type, undeclared methods)
  and `COVERAGE_POSITIVE` valid ones;
- Hypothesis-driven fuzzing: `FUZZ_POSITIVE` valid and `FUZZ_NEGATIVE` invalid cases;
- the request-id routes also with the id of a real finished job, the download route with the
  key of a real upload, the model routes with a real model name;
- without the API key, one valid case each: 401 (public routes: no 5xx).

The routes that read a raw body (queue submit and `/run`, V2 infer) declare none, so they are
also fuzzed through operations this file adds, carrying each inference endpoint's request
schema (V2: as tensors, plus tritonclient's headers). Personalization (a Ray Train job per
accepted case) is left to `test_personalize_*`; valid video requests are not sent at all (see
`FUZZ_VALID_VIDEO`). The chat request's cross-field rule, which OpenAPI does not show, is added
to the fuzzed copy of the document (`_with_rules`) so that valid chat cases are valid.

Passes when: no 5xx (a 503 with Retry-After is backpressure, a 504 with
`X-Fal-Request-Timeout-Type: user` the client's own start deadline), no request without an
answer within `CLIENT_TIMEOUT_S`, and every job the fuzzer got accepted ends with no 5xx
result. Every failing case is collected and reported together (request and answer); the
Serve replicas' tracebacks are in the captured output. A 5xx already known as a bug
(`KNOWN_BUGS`) is counted instead. The bugs found so far have regression tests at the end.

Cost, about 80 s on two cores once the app is up: valid cases would run the models at their
defaults (SDXL 1024² × 50 steps, …), so each case is made cheap before it is sent
(`tests.fuzz_util.CHEAP`: valid sizes, steps, frames and token counts capped, absent ones set;
invalid values left invalid). Drawing is seeded, so CI sends the same cases every run. Every
URL-looking string is pointed at a closed loopback port first (`tests.fuzz_util.loopback_only`):
the server never fetches anything the fuzzer made up.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable

import pytest
import requests
import schemathesis
from schemathesis import GenerationMode

from tests.conftest import API_KEY
from tests.fuzz_util import (
    LOOPBACK_URL,
    Sender,
    bad_status,
    cheap_fields,
    coverage,
    fuzzed,
    is_positive,
    loopback_only,
    make_cheap,
    report,
    wait_until,
)

SEED = 20260613
CLIENT_TIMEOUT_S = 60
COVERAGE_POSITIVE = 6
FUZZ_POSITIVE = 8
FUZZ_NEGATIVE = 8
# Body-aware passes over the raw-body routes, per endpoint and operation.
ENDPOINT_POSITIVE = 4
ENDPOINT_NEGATIVE = 8
ENDPOINT_COVERAGE_POSITIVE = 2
# Valid video requests are not sent: they would wake the scale-to-zero video deployment, which
# then idles for 10 minutes (`downscale_to_zero_delay_s`), and `test_modalities_http` (after
# this module) checks that it starts from zero. Their invalid cases are all sent; the video
# pipeline's own inputs are fuzzed once this runs last (then set this to True).
FUZZ_VALID_VIDEO = False
VIDEO_ENDPOINTS = {"image-to-video", "text-to-video"}
VIDEO_ROUTES = {"POST /v1/image-to-video": "image-to-video",
                "POST /v1/text-to-video": "text-to-video"}
# The V2 codec is shared by every model: the coverage phase's invalid tensors (hundreds per
# model) run for these two, which between them have every tensor kind (BYTES, INT64, FP64,
# BOOL, lists, JSON); the other models get Hypothesis' invalid cases only.
V2_COVERAGE = ("sdxl", "chat")
# Every accepted fuzz job ends within this (each is cheap; two workers share the queue).
JOBS_END_S = 180

OPERATIONS = [
    "GET /healthz",
    "GET /usage",
    "POST /generate",
    "POST /v1/chat",
    "POST /v1/chat/completions",
    "GET /v1/models",
    "POST /v1/tts",
    "POST /v1/image-to-video",
    "POST /v1/text-to-video",
    "POST /v1/text-to-3d",
    "POST /queue/{owner}/{name}",
    "GET /queue/{owner}/{name}/requests/{request_id}/status",
    "GET /queue/{owner}/{name}/requests/{request_id}/status/stream",
    "GET /queue/{owner}/{name}/requests/{request_id}",
    "PUT /queue/{owner}/{name}/requests/{request_id}/cancel",
    "GET /queue/requests/{request_id}/status",
    "GET /queue/requests/{request_id}/status/stream",
    "GET /queue/requests/{request_id}",
    "PUT /queue/requests/{request_id}/cancel",
    "POST /run/{owner}/{name}",
    "POST /files/upload",
    "GET /files/{key}",
    "GET /v2",
    "GET /v2/health/live",
    "GET /v2/health/ready",
    "GET /v2/models/{name}",
    "GET /v2/models/{name}/ready",
    "POST /v2/models/{name}/infer",
]
# No key needed: the probes and signed downloads (the signature is the credential).
PUBLIC = {"GET /healthz", "GET /v2/health/live", "GET /v2/health/ready", "GET /files/{key}"}

# Inference endpoints → the component schema of their input (`genserve.endpoints`).
ENDPOINT_INPUTS = {
    "sdxl": "GenerateRequest",
    "chat": "ChatRequest",
    "tts": "SpeechRequest",
    "image-to-video": "VideoRequest",
    "text-to-video": "TextToVideoRequest",
    "text-to-3d": "MeshRequest",
}


# 5xx bugs the fuzzer found and that are not fixed yet: (reason, does this request trigger
# it?), each with a strict-xfail reproduction at the end of this file (which fails once the bug
# is fixed, to drop it here). The fuzz tests count a 5xx of a request that triggers one instead
# of failing again. The two found so far, in the V2 codec, are fixed; their reproductions stay
# as regression tests.
KNOWN_BUGS: list[tuple[str, Callable]] = []


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(client) -> dict:
    r = client.get("/openapi.json")
    assert r.status_code == 200, r.text
    return r.json()


def _load(document: dict):
    config = schemathesis.Config.from_dict({"seed": SEED})
    return schemathesis.openapi.from_dict(copy.deepcopy(document), config=config)


def _with_rules(served: dict) -> dict:
    """The served document plus the cross-field rules its pydantic validators enforce but
    OpenAPI does not show, so that valid cases are valid: a chat request has `prompt` or
    `messages`, not both, and `system_prompt` only with `prompt`. (Without it no drawn chat
    request reaches the model.) Invalid cases are drawn against it as well."""
    document = copy.deepcopy(served)
    document["components"]["schemas"]["ChatRequest"]["oneOf"] = [
        {"required": ["prompt"], "properties": {"messages": {"type": "null"}}},
        {"required": ["messages"],
         "properties": {"prompt": {"type": "null"}, "system_prompt": {"type": "null"}}},
    ]
    return document


@pytest.fixture(scope="module")
def schema(served):
    return _load(_with_rules(served))


@pytest.fixture(scope="module")
def session():
    with requests.Session() as s:
        yield s


@pytest.fixture
def sender(app_url, tls_cert, session) -> Sender:
    return Sender(base_url=app_url, session=session, verify=str(tls_cert),
                  timeout_s=CLIENT_TIMEOUT_S, headers={"Authorization": f"Key {API_KEY}"},
                  failures=[], known=KNOWN_BUGS)


@pytest.fixture(scope="module")
def real_ids(client) -> dict[str, str]:
    """Path parameters naming real things: a finished chat job and an uploaded file."""
    job = client.post("/queue/genserve/chat", json={"prompt": "hi", "max_new_tokens": 2})
    assert job.status_code == 200, job.text
    request_id = job.json()["request_id"]
    done = wait_until(lambda: client.get(f"/queue/requests/{request_id}/status")
                      .json()["status"] == "COMPLETED", 120)
    assert done, f"the chat job {request_id} did not finish"
    upload = client.post("/files/upload", content=b"hello", params={"file_name": "a.txt"},
                         headers={"Content-Type": "text/plain"})
    assert upload.status_code == 200, upload.text
    key = upload.json()["url"].split("/files/", 1)[1].split("?")[0]
    return {"owner": "genserve", "name": "chat", "request_id": request_id, "key": key}


def _properties(document: dict, operation: dict) -> dict[str, dict]:
    """The JSON body's top-level property schemas (empty when the body has none)."""
    content = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
    ref = content.get("schema", {}).get("$ref", "")
    component = document["components"]["schemas"].get(ref.rsplit("/", 1)[-1], {})
    return component.get("properties", {})


def _check(sender, label: str) -> None:
    """Fail with every collected case."""
    known = f"; known bugs hit: {dict(sender.known_hits)}" if sender.known_hits else ""
    print(f"{label}: {sum(sender.statuses.values())} cases, statuses "
          f"{dict(sender.statuses)}{known}")
    assert not sender.failures, report(sender.failures)


# -- the judge itself ----------------------------------------------------------------------------


def test_sender_flags_5xx_and_hangs():
    """Against a loopback stub: a 500, a bare 503 and a silent server are failures; a 503 with
    Retry-After, a 504 of the client's own start deadline and a 4xx are not."""
    import http.server
    import threading
    import time
    from urllib.parse import parse_qs, urlsplit

    answers = {"500": (500, {}), "503-retry": (503, {"Retry-After": "2"}), "503": (503, {}),
               "504-user": (504, {"X-Fal-Request-Timeout-Type": "user"}), "504": (504, {}),
               "422": (422, {}), "hang": None}

    class Stub(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            answer = answers[parse_qs(urlsplit(self.path).query)["answer"][0]]
            if answer is None:
                time.sleep(2)
                answer = (200, {})
            status, headers = answer
            self.send_response(status)
            for name, value in {**headers, "Content-Length": "1"}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(b"x")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stub = _load({"openapi": "3.1.0", "info": {"title": "stub", "version": "1"},
                  "paths": {"/x": {"get": {
                      "parameters": [{"name": "answer", "in": "query", "required": True,
                                      "schema": {"type": "string"}}],
                      "responses": {"200": {"description": "ok"}}}}}})
    try:
        with requests.Session() as s:
            sender = Sender(base_url=f"http://127.0.0.1:{server.server_address[1]}", session=s,
                            verify=True, timeout_s=0.5, headers={}, failures=[])
            for answer in answers:
                sender.send(stub["/x"]["GET"].Case(query={"answer": answer}), label="GET /x")
    finally:
        server.shutdown()
    failed = {f.url.split("=", 1)[1]: f.status for f in sender.failures}
    assert failed == {"500": 500, "503": 503, "504": 504, "hang": None}, report(sender.failures)


# -- the served document -------------------------------------------------------------------------


def test_every_route_is_fuzzed(schema, video_before):
    served = sorted(op.ok().label for op in schema.get_all_operations())
    assert served == sorted(OPERATIONS)


# -- every operation as documented ------------------------------------------------------------


@pytest.mark.timeout(240)
@pytest.mark.parametrize("label", OPERATIONS)
def test_no_5xx(label, schema, served, sender, real_ids):
    method, path = label.split(" ", 1)
    operation = schema[path][method]
    properties = _properties(served, served["paths"][path][method.lower()])
    cases = [*coverage(schema, operation, COVERAGE_POSITIVE),
             *fuzzed(operation, GenerationMode.POSITIVE, FUZZ_POSITIVE, SEED),
             *fuzzed(operation, GenerationMode.NEGATIVE, FUZZ_NEGATIVE, SEED)]
    # The same routes on things that exist, so past the 404.
    names = {p.name for p in operation.path_parameters}
    if names and names <= real_ids.keys():
        params = {name: real_ids[name] for name in names}
        cases += fuzzed(operation, GenerationMode.POSITIVE, 2, SEED, path_parameters=params)
    if label in VIDEO_ROUTES:
        cases = _video_safe(cases, VIDEO_ROUTES[label], properties)
    sender.send_all(cases, label=label, properties=properties)
    _check(sender, label)


def _video_safe(cases: list, endpoint: str, properties: dict[str, dict]) -> list:
    """The cases that cannot wake the video deployment (see `FUZZ_VALID_VIDEO`): those the
    endpoint's request model refuses once `Sender` has made them cheap and loopback-only (the
    server is laxer than the schema: `"seed": false` is valid), and image URLs, which the
    fetcher refuses first."""
    if FUZZ_VALID_VIDEO:
        return cases
    from pydantic import ValidationError

    from genserve.endpoints import ENDPOINTS

    def refused(case) -> bool:
        loopback_only(case)
        make_cheap(case, properties)
        if isinstance(case.body, dict) and case.body.get("image") == LOOPBACK_URL:
            return True
        try:
            ENDPOINTS[endpoint].request.model_validate(case.body)
        except ValidationError:
            return True
        return False

    return [c for c in cases if refused(c)]


# -- the raw-body routes with each endpoint's input ------------------------------------------


def _queue_document(served: dict) -> dict:
    """Submit and run for each inference endpoint, with its input schema and the queue's
    query parameter and headers."""
    params = [
        {"name": "fal_webhook", "in": "query", "schema": {"type": "string"}},
        {"name": "Idempotency-Key", "in": "header",
         "schema": {"type": "string", "minLength": 1, "maxLength": 255}},
        {"name": "X-Fal-Queue-Priority", "in": "header",
         "schema": {"type": "string", "enum": ["normal", "low"]}},
        {"name": "X-Fal-Request-Timeout", "in": "header",
         "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": 600}},
    ]
    paths = {}
    for endpoint, component in ENDPOINT_INPUTS.items():
        body = {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{component}"}}}}
        op = {"parameters": params, "requestBody": body,
              "responses": {"200": {"description": "the job"}}}
        paths[f"/queue/genserve/{endpoint}"] = {"post": op}
        paths[f"/run/genserve/{endpoint}"] = {"post": op}
    return {**served, "paths": paths}


def _v2_tensor(spec: dict, prop: dict) -> dict:
    """The schema of one input tensor as its model's metadata describes it, data typed from the
    field's own schema."""
    item = {k: v for k, v in prop.items() if k not in ("default", "title", "description")}
    if "anyOf" in item:  # Optional[X]: null is no tensor element
        item = next((s for s in item["anyOf"] if s.get("type") != "null"), {})
    if spec["datatype"] == "BYTES" and item.get("type") != "string":
        item = {"type": "string", "maxLength": 200}  # JSON text
    if spec["shape"] == [1]:
        data, shape = {"type": "array", "items": item, "minItems": 1, "maxItems": 1}, \
            {"enum": [[1]]}
    else:
        data = item if item.get("type") == "array" else {"type": "array", "items": item}
        shape = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 4},
                 "minItems": 1, "maxItems": 2}
    return {"type": "object", "required": ["name", "datatype", "shape", "data"],
            "properties": {"name": {"enum": [spec["name"]]},
                           "datatype": {"enum": [spec["datatype"]]},
                           "shape": shape, "data": data}}


def _v2_document(served: dict, metadata: dict[str, dict]) -> dict:
    paths = {}
    for endpoint, component in ENDPOINT_INPUTS.items():
        props = served["components"]["schemas"][component]["properties"]
        inputs = metadata[endpoint]["inputs"]
        outputs = [o["name"] for o in metadata[endpoint]["outputs"]]
        body = {"type": "object", "required": ["inputs"], "properties": {
            "id": {"type": "string", "maxLength": 64},
            "inputs": {"type": "array", "maxItems": len(inputs) + 1,
                       "items": {"oneOf": [_v2_tensor(s, props.get(s["name"], {}))
                                           for s in inputs]}},
            "outputs": {"type": "array", "maxItems": 2, "items": {
                "type": "object", "required": ["name"],
                "properties": {"name": {"enum": outputs}, "parameters": {
                    "type": "object", "properties": {"binary_data": {"type": "boolean"}}}}}},
            "parameters": {"type": "object",
                           "properties": {"binary_data_output": {"type": "boolean"}}}}}
        paths[f"/v2/models/{endpoint}/infer"] = {"post": {
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": {"200": {"description": "the output tensors"}}}}
    return {**served, "paths": paths}


def _cheap_v2(body, properties: dict[str, dict], positive: bool):
    """`cheap_fields` through V2 tensors: one-element tensors capped, absent ones added (INT64,
    as every capped field is an integer), a nulled field's tensor dropped."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        return body
    tensors = body["inputs"]
    present = {t.get("name") for t in tensors
               if isinstance(t, dict) and isinstance(t.get("name"), str)}
    scalars = {t["name"]: t["data"][0] for t in tensors
               if isinstance(t, dict) and isinstance(t.get("name"), str)
               and isinstance(t.get("data"), list) and len(t["data"]) == 1}
    cheap = cheap_fields(scalars, properties, positive)
    out = []
    for t in tensors:
        name = t.get("name") if isinstance(t, dict) else None
        if isinstance(name, str) and name in scalars and cheap[name] != scalars[name]:
            if cheap[name] is None:
                continue
            t = {**t, "data": [cheap[name]]}
        out.append(t)
    out += [{"name": n, "datatype": "INT64", "shape": [1], "data": [v]}
            for n, v in cheap.items() if n not in present]
    return {**body, "inputs": out}


@pytest.fixture(scope="module")
def fuzz_jobs() -> list[str]:
    """Request ids of the jobs the queue pass got accepted."""
    return []


def _endpoint_cases(schema, operation, *, negative_coverage: bool = True,
                    negative: bool = True) -> list:
    cases = coverage(schema, operation, ENDPOINT_COVERAGE_POSITIVE, negative_coverage)
    cases += fuzzed(operation, GenerationMode.POSITIVE, ENDPOINT_POSITIVE, SEED)
    if negative:
        cases += fuzzed(operation, GenerationMode.NEGATIVE, ENDPOINT_NEGATIVE, SEED)
    return cases


@pytest.fixture(scope="module")
def queue_schema(served):
    return _load(_queue_document(_with_rules(served)))


@pytest.fixture(scope="module")
def v2_schema(served, client):
    metadata = {e: client.get(f"/v2/models/{e}").json() for e in ENDPOINT_INPUTS}
    return _load(_v2_document(served, metadata))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("endpoint", ENDPOINT_INPUTS)
def test_queue_inputs_no_5xx(endpoint, served, queue_schema, sender, fuzz_jobs):
    schema = queue_schema
    properties = served["components"]["schemas"][ENDPOINT_INPUTS[endpoint]]["properties"]
    for route in ("queue", "run"):
        path = f"/{route}/genserve/{endpoint}"
        label = f"POST {path}"
        # `/run` validates with the submit code: its invalid cases would repeat `/queue`'s.
        cases = _endpoint_cases(schema, schema[path]["POST"], negative_coverage=route == "queue",
                                negative=route == "queue")
        if endpoint in VIDEO_ENDPOINTS:
            cases = _video_safe(cases, endpoint, properties)
        for case in cases:
            response = sender.send(case, label=label, properties=properties)
            if route == "queue" and response is not None and response.status_code == 200:
                fuzz_jobs.append(json.loads(response.content)["request_id"])
    _check(sender, f"queue {endpoint}")


@pytest.mark.timeout(JOBS_END_S + 60)
def test_fuzz_jobs_end_without_5xx(client, fuzz_jobs):
    """Every job the queue pass got accepted ends, and its result is no 5xx (a pipeline that
    crashed on an odd but valid input)."""
    if not fuzz_jobs:
        pytest.skip("the queue pass got no job accepted")
    print(f"{len(fuzz_jobs)} fuzz job(s) accepted")

    def status(rid):
        return client.get(f"/queue/requests/{rid}/status").json()["status"]

    wait_until(lambda: all(status(r) == "COMPLETED" for r in fuzz_jobs), JOBS_END_S, every_s=1)
    stuck = [r for r in fuzz_jobs if status(r) != "COMPLETED"]
    for rid in stuck:  # leave nothing running for the next test module
        client.put(f"/queue/requests/{rid}/cancel")
    assert not stuck, f"{len(stuck)} fuzz job(s) not done in {JOBS_END_S}s: {stuck}"
    results = {rid: client.get(f"/queue/requests/{rid}") for rid in fuzz_jobs}
    # A job that missed the start deadline its submitter set ends 504 (user): not a failure.
    errors = {rid: f"{r.status_code} {r.text[:300]}" for rid, r in results.items()
              if bad_status(r.status_code, r.headers)}
    assert not errors, json.dumps(errors, indent=1)


@pytest.mark.timeout(240)
# Not the video models unless `FUZZ_VALID_VIDEO`: an invalid V2 body (a wrong `id` type) can
# still carry valid tensors; the codec they would test is the one the other models use.
@pytest.mark.parametrize("endpoint", [e for e in ENDPOINT_INPUTS
                                      if FUZZ_VALID_VIDEO or e not in VIDEO_ENDPOINTS])
def test_v2_inputs_no_5xx(endpoint, served, v2_schema, sender):
    schema = v2_schema
    properties = served["components"]["schemas"][ENDPOINT_INPUTS[endpoint]]["properties"]
    path = f"/v2/models/{endpoint}/infer"
    cases = _endpoint_cases(schema, schema[path]["POST"],
                            negative_coverage=endpoint in V2_COVERAGE)
    for case in cases:
        case.body = _cheap_v2(case.body, properties, is_positive(case))
        sender.send(case, label=f"POST {path}")
    _check(sender, f"v2 {endpoint}")


# tritonclient's headers: where the JSON ends and binary tensors begin, and compression. The
# body is one valid chat request (two tokens), sent as is: gzip/deflate must be a clean 4xx.
V2_CHAT = {"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["hi"]},
                      {"name": "max_new_tokens", "datatype": "INT64", "shape": [1], "data": [2]}]}
V2_HEADERS = [
    {"name": "Inference-Header-Content-Length", "in": "header",
     "schema": {"type": "integer", "minimum": 0}},
    {"name": "Content-Encoding", "in": "header",
     "schema": {"type": "string", "enum": ["identity", "gzip", "deflate"]}},
]


def test_v2_headers_no_5xx(served, sender):
    schema = _load({**served, "paths": {"/v2/models/chat/infer": {"post": {
        "parameters": V2_HEADERS,
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"enum": [V2_CHAT]}}}},
        "responses": {"200": {"description": "the output tensors"}}}}}})
    operation = schema["/v2/models/chat/infer"]["POST"]
    sender.send_all(_endpoint_cases(schema, operation), label="POST /v2/models/chat/infer")
    _check(sender, "v2 headers")


# -- without the key ---------------------------------------------------------------------------


def test_without_key_is_401(schema, sender):
    """One valid case per operation without `Authorization`: 401 (public routes: no 5xx)."""
    def is_401(response):
        return None if response.status_code == 401 else f"{response.status_code}, not 401"

    for label in OPERATIONS:
        method, path = label.split(" ", 1)
        [case] = fuzzed(schema[path][method], GenerationMode.POSITIVE, 1, SEED)
        sender.send(case, label=label, headers={},
                    judge=None if label in PUBLIC else is_401)
    print(f"statuses {dict(sender.statuses)}")
    assert not sender.failures, report(sender.failures)


def _video_replicas() -> int:
    from ray import serve

    status = serve.status().applications["genserve"].deployments["ImageToVideo"]
    return status.replica_states.get("RUNNING", 0)


@pytest.fixture(scope="module")
def video_before(app_url) -> int:
    return _video_replicas()


def test_video_left_as_found(video_before):
    """Unless `FUZZ_VALID_VIDEO`, this module never wakes the scale-to-zero video deployment.
    (`video_before` is taken by `test_every_route_is_fuzzed`, before any fuzzing.)"""
    if FUZZ_VALID_VIDEO or video_before:
        pytest.skip("video was awake already, or is fuzzed on purpose")
    assert _video_replicas() == 0


# -- the bugs the fuzzer found --------------------------------------------------------------


def test_v2_datatype_not_a_string_is_400(client):
    """Was a 500: `_check_tensor` hashed the `datatype` (`datatype not in _ACCEPTS[...]`)."""
    for datatype in (["BYTES"], {"BYTES": 1}):
        body = {"inputs": [{"name": "prompt", "datatype": datatype, "shape": [1],
                            "data": ["hi"]}]}
        r = client.post("/v2/models/chat/infer", json=body)
        assert r.status_code == 400 and "prompt" in r.json()["error"], r.text


def test_v2_output_parameters_not_an_object_is_400(client):
    """Was a 500: `_requested` called `.get` on a truthy non-object `parameters`."""
    for parameters in ("binary", [None], 5):
        body = {"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1],
                            "data": ["hi"]}],
                "outputs": [{"name": "text", "parameters": parameters}]}
        r = client.post("/v2/models/chat/infer", json=body)
        assert r.status_code == 400 and "parameters" in r.json()["error"], r.text

"""Open Inference Protocol v2 (KServe / Triton / Inferless) routes, for the Ingress to delegate to.

Errors follow the protocol, not the rest of the API: a non-200 answer's body is
``{"error": message}``, which is what KServe clients and ``tritonclient`` read (tritonclient
raises ``InferenceServerException(msg=body["error"])``). `infer` returns those responses
itself: 400 for a request it cannot use (bad tensors, failed validation, `InvalidInput` from
the model), the error's own status for other `GenserveError`s (404, 503 with Retry-After).
Anything else propagates to the ingress's handlers. Routes outside `infer` (unknown model,
not ready) answer with `error_response`, or raise `V2Error` and turn it into one.
"""

from __future__ import annotations

import importlib.metadata
import uuid
import zlib
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from genserve.errors import GenserveError, InvalidInput
from genserve.v2 import schema
from genserve.v2.codec import decode_infer_request, encode_infer_response, to_request

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data"]
DEFAULT_MAX_BODY = 32 * 1024 * 1024  # when the app sets no `max_body_bytes`
RETRY_AFTER_S = "2"

if TYPE_CHECKING:
    from genserve.endpoints import EndpointSpec


class V2Error(Exception):
    """An error to answer in the protocol's shape: ``status`` with ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message)


def error_response(status: int, message: str) -> JSONResponse:
    headers = {"Retry-After": RETRY_AFTER_S} if status == 503 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _version() -> str:
    try:
        return importlib.metadata.version("genserve")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def server_metadata() -> dict[str, Any]:
    """`GET /v2`."""
    return {"name": "genserve", "version": _version(), "extensions": EXTENSIONS}


def model_metadata(name: str, endpoint: EndpointSpec) -> dict[str, Any]:
    """`GET /v2/models/{name}` for a registry entry (its ``request`` and ``response``)."""
    return schema.model_metadata(name, endpoint.request, endpoint.response)


def _decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """tritonclient's ``request_compression_algorithm``: gzip or deflate (zlib). The output
    is capped like a plain body, so a small compressed bomb cannot fill memory."""
    if not encoding or encoding.lower() == "identity":
        return body
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding.lower())
    if wbits is None:
        raise V2Error(415, f"unsupported Content-Encoding {encoding!r}; use gzip or deflate")
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit)
    except zlib.error as exc:
        raise V2Error(400, f"the {encoding} body does not decompress: {exc}") from None
    if inflater.unconsumed_tail:
        raise V2Error(413, f"the decompressed body is over {limit} bytes")
    return data


def _header_length(request: Request) -> int | None:
    value = request.headers.get(HEADER_LENGTH)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise V2Error(400, f"{HEADER_LENGTH} must be an integer, got {value!r}") from None


async def infer(request: Request, name: str, request_model: type[BaseModel],
                response_model: type[BaseModel],
                run: Callable[[BaseModel], Awaitable[dict | BaseModel]]) -> Response:
    """`POST /v2/models/{name}/infer`: decode the tensors into ``request_model``, ``run`` it
    (the endpoint's output JSON, files inline or as URLs) and encode the answer as tensors,
    in binary where the request asks for it."""
    limit = getattr(request.app.state, "max_body_bytes", DEFAULT_MAX_BODY)
    try:
        body = _decompress(await request.body(), request.headers.get("content-encoding"),
                           limit)
        decoded = decode_infer_request(body, _header_length(request), request_model,
                                       response_model)
        body_model = to_request(decoded, request_model)
        output = await run(body_model)
    except V2Error as exc:
        return exc.response()
    except InvalidInput as exc:
        return error_response(400, exc.message)
    except GenserveError as exc:
        return error_response(exc.status_code, exc.message)
    # KServe's response `id` is the request's; Triton leaves it out when none was sent. A
    # fresh one lets a client correlate logs either way.
    request_id = decoded.id or uuid.uuid4().hex
    content, headers = encode_infer_response(name, request_id, output, response_model,
                                             decoded.outputs, decoded.binary_output)
    return Response(content, headers=headers)

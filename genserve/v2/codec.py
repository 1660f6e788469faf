"""Open Inference Protocol v2 requests → request-model fields, and response dicts → tensors.

Both the JSON form (``data`` lists) and Triton's binary tensor extension, which
``tritonclient.http`` uses by default, are read and written. With the extension the body is
the JSON header (its byte length in the ``Inference-Header-Content-Length`` header) followed by
the raw tensors in input order, each sized by its ``parameters.binary_data_size``: BYTES
elements as a 4-byte little-endian length and the bytes, numbers little-endian.

Every error is `InvalidInput` naming the tensor; `deployments.routes.v2` answers it with the
protocol's ``{"error": message}``.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from genserve.errors import InvalidInput
from genserve.schemas.common import FieldError
from genserve.v2.schema import JSON_TYPE, TEXT_TYPE, TensorSpec, tensor_specs

_NUMPY = {"BOOL": "?", "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
          "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
          "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}
_INTS = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
# What a field's datatype takes on input: any integer width for INT64 (clients often send
# INT32), and any float or integer for FP64 (numpy users send FP32; pydantic takes ints).
_ACCEPTS = {"BYTES": {"BYTES"}, "BOOL": {"BOOL"}, "INT64": _INTS,
            "FP64": {"FP16", "FP32", "FP64"} | _INTS}


@dataclass(frozen=True)
class RequestedOutput:
    """An entry of the request's ``outputs``; ``binary_data`` None means the request default."""

    name: str
    binary_data: bool | None = None


@dataclass
class DecodedRequest:
    id: str | None
    fields: dict[str, Any]
    outputs: list[RequestedOutput] = field(default_factory=list)
    # Request-level ``parameters.binary_data_output``: tritonclient sets it when it names
    # no outputs, asking for every output in binary.
    binary_output: bool = False


def _split_bytes(raw: bytes, name: str) -> list[bytes]:
    """Triton's serialized BYTES tensor: each element a uint32 LE length, then the bytes."""
    items, pos = [], 0
    while pos < len(raw):
        (size,) = struct.unpack_from("<I", raw, pos) if pos + 4 <= len(raw) else (-1,)
        if size < 0 or pos + 4 + size > len(raw):
            raise InvalidInput(f"input '{name}': BYTES element at byte {pos} overruns the "
                               f"{len(raw)}-byte tensor", name)
        items.append(raw[pos + 4:pos + 4 + size])
        pos += 4 + size
    return items


def _flatten(data: Any) -> list:
    """KServe allows nested row-major arrays in `data`; the shape says how to read them.
    Iterative, so a deeply nested body cannot overflow the stack."""
    out, stack = [], [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            out.append(item)
    return out


def _float(value: Any, datatype: str) -> float:
    # An FP32 0.7 is 0.699999988079071 as a double; its shortest repr gives back the 0.7
    # the client wrote, which is what the schema's bounds and the echoed request should see.
    value = float(value)
    if datatype in ("FP16", "FP32") and math.isfinite(value):
        return float(str(np.dtype(_NUMPY[datatype]).type(value)))
    return value


def _json_ok(value: Any, datatype: str) -> bool:
    if datatype == "BYTES":
        return isinstance(value, str)
    if datatype == "BOOL" or isinstance(value, bool):  # JSON true is no number
        return datatype == "BOOL" and isinstance(value, bool)
    return isinstance(value, int if datatype in _INTS else (int, float))


def _elements(tensor: dict, raw: bytes | None, name: str) -> list:
    """The tensor's elements as a flat list of Python values (BYTES elements as bytes/str)."""
    datatype = tensor["datatype"]
    if raw is not None and datatype == "BYTES":
        return _split_bytes(raw, name)
    if raw is not None:
        dtype = np.dtype(_NUMPY[datatype])
        if len(raw) % dtype.itemsize:
            raise InvalidInput(f"input '{name}': {len(raw)} bytes is not a whole number of "
                               f"{datatype} elements ({dtype.itemsize} bytes each)", name)
        values = np.frombuffer(raw, dtype=dtype).tolist()
    elif "data" not in tensor:
        raise InvalidInput(f"input '{name}' has neither `data` nor "
                           "`parameters.binary_data_size`", name)
    else:
        values = _flatten(tensor["data"])
        bad = [v for v in values if not _json_ok(v, datatype)]
        if bad:
            raise InvalidInput(f"input '{name}': {datatype} data holds {bad[0]!r}", name)
    return [_float(v, datatype) for v in values] if datatype.startswith("FP") else values


def _field_value(spec: TensorSpec, tensor: dict, values: list) -> Any:
    """Elements → the field's value: one element for [1] fields, a list for [-1] ones."""
    name = spec.name
    if spec.datatype == "BYTES":
        try:
            values = [v.decode("utf-8") if isinstance(v, bytes) else v for v in values]
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"input '{name}' is not UTF-8 text: {exc}", name) from None
    if spec.kind == "list":
        return values
    if len(values) != 1:
        raise InvalidInput(f"input '{name}' takes one element ({spec.datatype} [1]) but "
                           f"has shape {tensor['shape']}", name)
    if spec.kind != "json":
        return values[0]
    try:
        return json.loads(values[0])
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"input '{name}' must be JSON text: {exc}", name) from None


def _check_tensor(tensor: Any, index: int, specs: dict[str, TensorSpec]) -> TensorSpec:
    """The input's spec, once its name, shape and datatype fit the model."""
    if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
        raise InvalidInput(f"inputs[{index}] must be an object with a string `name`")
    name, shape, datatype = tensor["name"], tensor.get("shape"), tensor.get("datatype")
    spec = specs.get(name)
    if spec is None:
        raise InvalidInput(f"unknown input '{name}'; the inputs are: {', '.join(specs)}", name)
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidInput(f"input '{name}': `shape` must be a list of non-negative "
                           f"integers, got {shape!r}", name)
    if not isinstance(datatype, str) or datatype not in _ACCEPTS[spec.datatype]:
        raise InvalidInput(f"input '{name}' must be {spec.datatype} {list(spec.shape)} but "
                           f"is {datatype} {shape}", name)
    params = tensor.get("parameters")
    if not isinstance(params, (dict, type(None))) or "shared_memory_region" in (params or {}):
        raise InvalidInput(f"input '{name}': only inline `parameters` without shared "
                           "memory are supported", name)
    return spec


def _requested(outputs: Any, response_model: type[BaseModel] | None) -> list[RequestedOutput]:
    known = [s.name for s in tensor_specs(response_model, output=True)] \
        if response_model is not None else None
    requested = []
    for item in outputs or []:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(f"each of `outputs` must be an object with a string `name`, "
                               f"got {item!r}")
        name, params = item["name"], item.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidInput(f"output '{name}': `parameters` must be an object, got "
                               f"{params!r}"[:200], name)
        if known is not None and name not in known:
            raise InvalidInput(f"unknown output '{name}'; the outputs are: "
                               f"{', '.join(known)}", name)
        if "classification" in params or "shared_memory_region" in params:
            raise InvalidInput(f"output '{name}': classification and shared-memory outputs "
                               "are not supported", name)
        binary = params.get("binary_data")
        requested.append(RequestedOutput(name, None if binary is None else bool(binary)))
    return requested


def decode_infer_request(body: bytes, header_length: int | None,
                         request_model: type[BaseModel],
                         response_model: type[BaseModel] | None = None) -> DecodedRequest:
    """Parse a v2 infer body (JSON, or JSON + binary tensors when ``header_length`` is the
    ``Inference-Header-Content-Length``) into the request model's field values. Requested
    output names are checked against ``response_model`` when it is given."""
    if header_length is not None and not 0 < header_length <= len(body):
        raise InvalidInput(f"Inference-Header-Content-Length {header_length} is outside the "
                           f"{len(body)}-byte body")
    split = len(body) if header_length is None else header_length
    try:
        request = json.loads(body[:split])
    except (ValueError, RecursionError) as exc:
        hint = "" if header_length is not None or "Extra data" not in str(exc) else (
            "; binary tensor data needs the Inference-Header-Content-Length header")
        raise InvalidInput(f"the inference request is not valid JSON: {exc}{hint}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) \
            or not isinstance(request.get("outputs", []), list):
        raise InvalidInput("the inference request must be a JSON object with an `inputs` "
                           "list (and optionally an `outputs` list)")
    specs = {s.name: s for s in tensor_specs(request_model)}
    fields: dict[str, Any] = {}
    pos = split  # binary tensors follow the JSON, in input order
    for index, tensor in enumerate(request["inputs"]):
        spec = _check_tensor(tensor, index, specs)
        name, count = spec.name, math.prod(tensor["shape"])
        if name in fields:
            raise InvalidInput(f"input '{name}' is given twice", name)
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        raw = None
        if size is not None:
            if not isinstance(size, int) or size < 0 or pos + size > len(body):
                raise InvalidInput(f"input '{name}': binary_data_size {size!r} overruns the "
                                   f"body ({len(body) - pos} bytes left)", name)
            raw, pos = body[pos:pos + size], pos + size
        values = _elements(tensor, raw, name)
        if len(values) != count:
            raise InvalidInput(f"input '{name}' has {len(values)} elements but shape "
                               f"{tensor['shape']} needs {count}", name)
        fields[name] = _field_value(spec, tensor, values)
    if pos != len(body):
        raise InvalidInput(f"{len(body) - pos} bytes of binary data follow the last input's")
    params = request.get("parameters")
    request_id = request.get("id")
    return DecodedRequest(id=None if request_id is None else str(request_id), fields=fields,
                          outputs=_requested(request.get("outputs"), response_model),
                          binary_output=isinstance(params, dict)
                          and bool(params.get("binary_data_output")))


def to_request(decoded: DecodedRequest, request_model: type[BaseModel]) -> BaseModel:
    """Validate the decoded fields with ``request_model``; errors name the input tensor."""
    try:
        return request_model.model_validate(decoded.fields)
    except ValidationError as exc:
        messages, first = [], None
        for err in exc.errors():
            cause = (err.get("ctx") or {}).get("error")
            loc, msg = [str(p) for p in err.get("loc", ())], err.get("msg", "invalid")
            if isinstance(cause, FieldError):  # a cross-field rule names its own field
                loc, msg = [*loc, cause.field], str(cause)
            name = loc[0] if loc else None
            first = first or name
            where = f"input '{name}'" if name else "the inputs"
            if len(loc) > 1:
                where += f" at {'.'.join(loc[1:])}"
            messages.append(f"{where}: {msg}")
        raise InvalidInput("; ".join(messages), field=first) from None


# -- responses ---------------------------------------------------------------------------------


def _guess_spec(name: str, value: Any) -> TensorSpec:
    # A key the response model does not declare: text and numbers as themselves, else JSON.
    datatype = {str: "BYTES", bool: "BOOL", int: "INT64", float: "FP64"}.get(type(value))
    kind = "json" if datatype is None else "scalar"
    return TensorSpec(name, datatype or "BYTES", (1,), False, kind, {})


def _output_elements(spec: TensorSpec, value: Any) -> list:
    if spec.kind == "json":
        return [json.dumps(value)]
    if spec.kind in ("url", "urls"):  # File/ImageOut dicts; a bare URL string passes as is
        items = value if spec.kind == "urls" else [value]
        return [item["url"] if isinstance(item, dict) else item for item in items]
    items = list(value) if spec.kind == "list" else [value]
    if spec.datatype == "FP64":
        return [float(v) for v in items]
    return items


def _binary(datatype: str, elements: list) -> bytes:
    if datatype == "BYTES":
        encoded = [e.encode("utf-8") if isinstance(e, str) else bytes(e) for e in elements]
        return b"".join(struct.pack("<I", len(e)) + e for e in encoded)
    return np.asarray(elements, dtype=_NUMPY[datatype]).tobytes()


def encode_infer_response(model_name: str, request_id: str | None, output: dict | BaseModel,
                          response_model: type[BaseModel], requested: list[RequestedOutput],
                          binary_default: bool = False,
                          model_version: str = "1") -> tuple[bytes, dict[str, str]]:
    """The v2 infer response for ``output`` (the endpoint's JSON answer) as (body, headers).

    Only ``requested`` outputs when it names some (in that order), else every non-null field;
    outputs asking for ``binary_data`` (or all, with ``binary_default``) go in Triton's binary
    extension and the headers then carry ``Inference-Header-Content-Length``."""
    if isinstance(output, BaseModel):
        output = output.model_dump(mode="json")
    specs = {s.name: s for s in tensor_specs(response_model, output=True)}
    if requested:
        wanted = [(r.name, binary_default if r.binary_data is None else r.binary_data)
                  for r in requested]
    else:
        names = [n for n in specs if n in output] + [n for n in output if n not in specs]
        wanted = [(n, binary_default) for n in names]
    tensors, buffers = [], []
    for name, binary in wanted:
        value = output.get(name)
        if value is None:  # a null field is left out, as the protocol has no null tensor
            continue
        spec = specs.get(name) or _guess_spec(name, value)
        elements = _output_elements(spec, value)
        tensor: dict[str, Any] = {"name": name, "datatype": spec.datatype,
                                  "shape": [len(elements)]}
        if spec.datatype == "BYTES":
            content_type = JSON_TYPE if spec.kind == "json" else TEXT_TYPE
            tensor["parameters"] = {"content_type": spec.parameters.get("content_type",
                                                                        content_type)}
        if binary:
            raw = _binary(spec.datatype, elements)
            tensor.setdefault("parameters", {})["binary_data_size"] = len(raw)
            buffers.append(raw)
        else:
            tensor["data"] = elements
        tensors.append(tensor)
    response = {"model_name": model_name, "model_version": model_version,
                "id": request_id or "", "outputs": tensors}
    header = json.dumps(response, separators=(",", ":")).encode()
    if not buffers:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(buffers), {"Content-Type": "application/octet-stream",
                                        "Inference-Header-Content-Length": str(len(header))}

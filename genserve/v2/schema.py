"""Open Inference Protocol v2 tensor metadata, derived from our pydantic request/response models.

Each top-level field is one tensor. The mapping (also what `codec` decodes and encodes):

=========================================  ==========  =======  ===========================
field type                                 datatype    shape    value
=========================================  ==========  =======  ===========================
str, Literal/Enum of str                   BYTES       [1]      UTF-8 text
bool                                       BOOL        [1]
int (Literal/Enum of int)                  INT64       [1]
float                                      FP64        [1]      FP32/FP16 accepted on input
list[str] / list[int] / list[float|bool]   as element  [-1]     a list, any length
nested model, dict, list of models, union  BYTES       [1]      JSON text (content_type
                                                                ``application/json``)
output: model with a ``url`` (File)        BYTES       [1]      its URL (``text/uri-list``)
output: list of such models (images)       BYTES       [-1]     their URLs
=========================================  ==========  =======  ===========================

``Optional[X]`` maps as X with ``required: false``. Floats are FP64 because Python floats
are doubles: a value sent as FP64 reaches the model exactly. Description, default and example
travel in each tensor's ``parameters`` (KServe allows extra fields there).
"""

from __future__ import annotations

import enum
import json
import pprint
import types
import typing
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel
from pydantic_core import PydanticUndefined, to_jsonable_python

PLATFORM = "genserve"
JSON_TYPE = "application/json"
URL_TYPE = "text/uri-list"
TEXT_TYPE = "str"  # KServe's own content_type for BYTES tensors that hold text

# How a tensor carries its field: one element, a list of elements, JSON text, or URLs.
Kind = Literal["scalar", "list", "json", "url", "urls"]
_SCALARS: dict[type, str] = {bool: "BOOL", int: "INT64", float: "FP64", str: "BYTES"}
# Inferless names text "STRING"; the numeric names are the protocol's own.
_INFERLESS = {"BYTES": "STRING"}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a model's v2 signature, and how it maps to its pydantic field."""

    name: str
    datatype: str  # BYTES | BOOL | INT64 | FP64
    shape: tuple[int, ...]  # [1] one element, [-1] any number
    required: bool  # inputs: pydantic's is_required(); outputs: never null (always present)
    kind: Kind
    parameters: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape),
                "required": self.required, "parameters": dict(self.parameters)}


def _strip(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without Annotated/Optional wrappers, whether None was allowed)."""
    nullable = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            nullable = nullable or len(args) < len(typing.get_args(annotation))
            if len(args) != 1:
                return typing.Union[tuple(args)], nullable  # a real union: sent as JSON
            annotation = args[0]
        else:
            return annotation, nullable


def _scalar_type(annotation: Any) -> str | None:
    """The datatype of a one-value type (str, bool, int, float, Literal, Enum), else None."""
    annotation, _ = _strip(annotation)
    if typing.get_origin(annotation) is Literal:
        kinds = {_SCALARS.get(type(v)) for v in typing.get_args(annotation)}
        return kinds.pop() if len(kinds) == 1 and None not in kinds else None
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        kinds = {_SCALARS.get(type(m.value)) for m in annotation}
        return kinds.pop() if len(kinds) == 1 and None not in kinds else None
    if isinstance(annotation, type):
        for python_type, datatype in _SCALARS.items():  # bool first: bool is an int
            if issubclass(annotation, python_type):
                return datatype
    return None


def _has_url(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel) \
        and "url" in annotation.model_fields


def _classify(annotation: Any, output: bool) -> tuple[str, tuple[int, ...], Kind]:
    datatype = _scalar_type(annotation)
    if datatype is not None:
        return datatype, (1,), "scalar"
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, set, frozenset) and typing.get_args(annotation):
        item = typing.get_args(annotation)[0]
        datatype = _scalar_type(item)
        if datatype is not None and (origin is not tuple or ... in typing.get_args(annotation)):
            return datatype, (-1,), "list"
        if output and _has_url(_strip(item)[0]):
            return "BYTES", (-1,), "urls"
    elif output and _has_url(annotation):
        return "BYTES", (1,), "url"
    return "BYTES", (1,), "json"


def _jsonable(value: Any) -> Any:
    try:
        return to_jsonable_python(value)
    except Exception:  # a default that is not JSON (a callable, an object) is left unsaid
        return None


@lru_cache(maxsize=64)
def tensor_specs(model: type[BaseModel], output: bool = False) -> tuple[TensorSpec, ...]:
    """The tensors of ``model``, in field order. ``output`` turns URL-carrying models
    (`File`, `ImageOut` lists) into URL tensors instead of JSON. Cached: models are
    classes, built once; e.g. ``tensor_specs(GenerateRequest)[0]`` is prompt, BYTES [1]."""
    specs = []
    for name, info in model.model_fields.items():
        annotation, nullable = _strip(info.annotation)
        datatype, shape, kind = _classify(annotation, output)
        params: dict[str, Any] = {}
        if info.description:
            params["description"] = info.description
        if kind == "json":
            params["content_type"] = JSON_TYPE
        elif kind in ("url", "urls"):
            params["content_type"] = URL_TYPE
        elif datatype == "BYTES":
            params["content_type"] = TEXT_TYPE
        if not info.is_required():
            default = info.default if info.default_factory is None else info.default_factory()
            if default is not PydanticUndefined:
                params["default"] = _jsonable(default)
        if info.examples:
            params["example"] = _jsonable(info.examples[0])
        required = not nullable if output else info.is_required()
        specs.append(TensorSpec(name, datatype, shape, required, kind, params))
    return tuple(specs)


def model_metadata(name: str, request_model: type[BaseModel], response_model: type[BaseModel],
                   versions: tuple[str, ...] = ("1",)) -> dict[str, Any]:
    """The v2 model metadata (`GET /v2/models/{name}`): inputs from the request model,
    outputs from the response model."""
    return {"name": name, "versions": list(versions), "platform": PLATFORM,
            "inputs": [s.metadata() for s in tensor_specs(request_model)],
            "outputs": [s.metadata() for s in tensor_specs(response_model, output=True)]}


def _inferless_example(spec: TensorSpec) -> list | None:
    example = spec.parameters.get("example")
    if example is None:
        return None
    if spec.kind == "json":
        return [json.dumps(example)]
    return list(example) if spec.kind == "list" else [example]


def input_schema(request_model: type[BaseModel]) -> dict[str, dict[str, Any]]:
    """Inferless's ``INPUT_SCHEMA`` for ``request_model``: {field: {datatype, required, shape,
    example}}; text is ``STRING``, examples are lists, JSON fields carry JSON text."""
    schema = {}
    for spec in tensor_specs(request_model):
        entry: dict[str, Any] = {"datatype": _INFERLESS.get(spec.datatype, spec.datatype),
                                 "required": spec.required, "shape": list(spec.shape)}
        example = _inferless_example(spec)
        if example is not None:
            entry["example"] = example
        schema[spec.name] = entry
    return schema


def format_input_schema(name: str, request_model: type[BaseModel]) -> str:
    """``input_schema.py`` source text for Inferless (``genserve schema <name>``): one key
    per line, values as Python literals, so the file reads like Inferless's own examples."""
    lines = [f'"""Inferless input schema of the genserve `{name}` endpoint '
             f'({request_model.__name__}).', "",
             f'Generated by `genserve schema {name}`."""', "", "INPUT_SCHEMA = {"]
    for field_name, entry in input_schema(request_model).items():
        lines.append(f"    {field_name!r}: {{")
        lines += [f"        {key!r}: {pprint.pformat(value, width=200)}," for key, value
                  in entry.items()]
        lines.append("    },")
    lines.append("}")
    return "\n".join(lines) + "\n"

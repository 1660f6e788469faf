"""How each catalog endpoint (`genserve/endpoints.py`) runs on the serving graph: the queue
worker, the synchronous run path and the V2 protocol all come through `run_endpoint`.

The same route functions as the native HTTP routes do the work, so a job and a direct call give
the same answer for the same input. File-valued answers are always JSON `File`s here (the
binary `response_format`s are for direct HTTP calls).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from ray.serve.handle import DeploymentHandle

from genserve.endpoints import EndpointSpec
from genserve.errors import NotFound

JSON_FORMAT = {"tts": "json", "image-to-video": "json", "text-to-video": "json",
               "text-to-3d": "json"}


@dataclass
class Handles:
    """The pipeline deployments (None: left out of the YAML) and the URL fetcher."""

    base: DeploymentHandle | None = None
    refiner: DeploymentHandle | None = None
    safety: DeploymentHandle | None = None
    llm: DeploymentHandle | None = None
    tts: DeploymentHandle | None = None
    video: DeploymentHandle | None = None
    mesh3d: DeploymentHandle | None = None
    llm_name: str | None = None
    fetcher: Any = None

    def need(self, spec: EndpointSpec) -> None:
        missing = [n for n in spec.needs if getattr(self, n) is None]
        if missing:
            raise NotFound(f"endpoint {spec.name!r} needs pipeline(s) {missing}, which are "
                           "not deployed on this server (disabled in serve_config.yaml)",
                           field="endpoint")


def prepare(spec: EndpointSpec, body: BaseModel) -> BaseModel:
    """The request as the queue runs it: JSON answers, no token streaming."""
    if spec.name in JSON_FORMAT:
        return body.model_copy(update={"response_format": JSON_FORMAT[spec.name]})
    if spec.name == "chat":
        return body.model_copy(update={"stream": False})
    return body


async def run_endpoint(spec: EndpointSpec, h: Handles, body: BaseModel,
                       progress: Callable[[str], None] | None = None) -> dict:
    """Run one inference request; the answer as JSON (files inline as data URIs)."""
    from deployments.routes import chat, media, sdxl

    h.need(spec)
    body = prepare(spec, body)
    name = spec.name
    if name == "sdxl":
        out = await sdxl.generate(h.base, h.refiner, h.safety, body, progress)
    elif name == "chat":
        out = await chat.chat(h.llm, h.llm_name, body)
    elif name == "tts":
        out = await media.speech(h.tts, body)
    elif name == "image-to-video":
        out = await media.image_to_video(h.video, h.fetcher, body)
    elif name == "text-to-video":
        out = await media.text_to_video(h.base, h.refiner, h.safety, h.video, body)
    elif name == "text-to-3d":
        out = await media.text_to_3d(h.mesh3d, body)
    else:
        raise NotFound(f"endpoint {name!r} does not run on the inference path",
                       field="endpoint")
    return out.model_dump(mode="json")

"""The catalog of job endpoints: name → request/response schema and kind.

One list for every surface that names a pipeline: the queue (`/queue/genserve/<name>`), the
synchronous run path, the V2 tensor protocol (`/v2/models/<name>`), the Python client and the
CLI. Schemas only (cheap to import, no Ray); `deployments/endpoints.py` adds how each one runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

APP_OWNER = "genserve"


@dataclass(frozen=True)
class EndpointSpec:
    name: str
    request: type[BaseModel]
    response: type[BaseModel]
    kind: Literal["inference", "training"]
    summary: str
    # Handles (deployment names in `deployments.ingress.Ingress`) the endpoint needs; an
    # endpoint whose pipeline is left out of the YAML answers 404.
    needs: tuple[str, ...]

    @property
    def app_id(self) -> str:
        """The fal-style application id clients pass (`fal_client.submit("genserve/sdxl", …)`)."""
        return f"{APP_OWNER}/{self.name}"


def _specs() -> dict[str, EndpointSpec]:
    from genserve.schemas.llm import ChatRequest, ChatResponse
    from genserve.schemas.mesh3d import MeshRequest, MeshResponse
    from genserve.schemas.personalize import PersonalizeOutput, PersonalizeRequest
    from genserve.schemas.sdxl import GenerateRequest, GenerateResponse
    from genserve.schemas.tts import SpeechRequest, SpeechResponse
    from genserve.schemas.video import TextToVideoRequest, VideoRequest, VideoResponse

    specs = [
        EndpointSpec("sdxl", GenerateRequest, GenerateResponse, "inference",
                     "SDXL text-to-image / image-to-image, optional refiner and LoRA",
                     ("base", "refiner", "safety")),
        EndpointSpec("chat", ChatRequest, ChatResponse, "inference",
                     "LLM chat (the whole answer; stream tokens with /v1/chat)", ("llm",)),
        EndpointSpec("tts", SpeechRequest, SpeechResponse, "inference",
                     "Text-to-speech", ("tts",)),
        EndpointSpec("image-to-video", VideoRequest, VideoResponse, "inference",
                     "Stable Video Diffusion: an image → an MP4", ("video",)),
        EndpointSpec("text-to-video", TextToVideoRequest, VideoResponse, "inference",
                     "SDXL first frame, animated by Stable Video Diffusion",
                     ("base", "refiner", "safety", "video")),
        EndpointSpec("text-to-3d", MeshRequest, MeshResponse, "inference",
                     "Shap-E: a prompt → a mesh", ("mesh3d",)),
        EndpointSpec("personalization", PersonalizeRequest, PersonalizeOutput, "training",
                     "Fine-tune SDXL on your photos (LoRA/DoRA + pivotal tuning) as a Ray "
                     "Train job", ()),
    ]
    return {s.name: s for s in specs}


ENDPOINTS: dict[str, EndpointSpec] = _specs()


def endpoint(name: str) -> EndpointSpec:
    """The endpoint called ``name`` (also accepts ``genserve/<name>``); `NotFound` otherwise."""
    from genserve.errors import NotFound

    short = name.removeprefix(f"{APP_OWNER}/")
    if short not in ENDPOINTS:
        raise NotFound(f"unknown endpoint {name!r}; available: {sorted(ENDPOINTS)}",
                       field="endpoint")
    return ENDPOINTS[short]

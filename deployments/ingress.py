"""The HTTP ingress: FastAPI on Ray Serve, composing the pipeline deployments.

It validates (pydantic), authenticates, logs usage and routes; it never runs a model. Route
methods stay on this class (Serve binds only methods of the ingress class itself in a
replica) and delegate to one module per modality in `deployments/routes/`. A pipeline left
out of the YAML has no handle here and its routes answer 404.
"""

# No `from __future__ import annotations`: Serve rebuilds these methods' signatures for FastAPI
# and needs the real classes, not strings.

from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.http_app import PUBLIC_PATHS, app
from deployments.routes import chat, media, sdxl
from genserve.errors import NotFound
from genserve.schemas.llm import (
    ChatCompletion,
    ChatCompletionRequest,
    ChatRequest,
    ChatResponse,
    ModelList,
)
from genserve.schemas.mesh3d import MeshRequest, MeshResponse
from genserve.schemas.sdxl import GenerateRequest, GenerateResponse
from genserve.schemas.tts import SpeechRequest, SpeechResponse
from genserve.schemas.video import TextToVideoRequest, VideoRequest, VideoResponse

BINARY = {"description": "The file itself when `response_format` asks for it."}


@serve.deployment(max_ongoing_requests=64)
@serve.ingress(app)
class Ingress:
    def __init__(self, base: DeploymentHandle | None = None,
                 refiner: DeploymentHandle | None = None,
                 safety: DeploymentHandle | None = None, llm: DeploymentHandle | None = None,
                 tts: DeploymentHandle | None = None, video: DeploymentHandle | None = None,
                 mesh3d: DeploymentHandle | None = None, llm_name: str | None = None,
                 database_url: str | None = None, max_body_bytes: int = 32 * 1024 * 1024,
                 fetch_allow_hosts: list[str] | None = None):
        from genserve.fetch import Fetcher
        from genserve.http.auth import ApiKeys
        from genserve.usage import UsageLog

        self.base, self.refiner, self.safety = base, refiner, safety
        self.llm, self.tts, self.video, self.mesh3d = llm, tts, video, mesh3d
        self.llm_name = llm_name
        self.fetcher = Fetcher(allow_hosts=frozenset(fetch_allow_hosts or ()))
        app.state.api_keys = ApiKeys.from_env()
        app.state.usage = UsageLog(database_url)
        app.state.max_body_bytes = max_body_bytes
        app.state.public_paths = PUBLIC_PATHS

    def _need(self, *names: str) -> None:
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise NotFound(f"pipeline(s) {missing} are not deployed on this server "
                           "(disabled in serve_config.yaml)")

    @app.get("/healthz", summary="Liveness of the ingress", tags=["ops"])
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.post("/generate", response_model=GenerateResponse, tags=["image"],
              summary="SDXL text-to-image / image-to-image (DataCrunch-compatible)")
    async def generate(self, body: GenerateRequest) -> GenerateResponse:
        """Also the Python entry point: ``app_handle.generate.remote(GenerateRequest(...))``."""
        self._need("base", "refiner", "safety")
        return await sdxl.generate(self.base, self.refiner, self.safety, body)

    @app.post("/v1/chat", response_model=ChatResponse, tags=["text"],
              summary="LLM chat; `stream: true` answers Server-Sent Events",
              responses={200: {"content": {"text/event-stream": {}}}})
    async def chat(self, body: ChatRequest):
        self._need("llm")
        return await chat.chat(self.llm, self.llm_name, body)

    @app.post("/v1/chat/completions", response_model=ChatCompletion, tags=["openai"],
              summary="OpenAI-compatible chat completions (stream or not)",
              responses={200: {"content": {"text/event-stream": {}}}})
    async def chat_completions(self, body: ChatCompletionRequest):
        self._need("llm")
        return await chat.chat_completions(self.llm, self.llm_name, body)

    @app.get("/v1/models", response_model=ModelList, tags=["openai"],
             summary="OpenAI-compatible model list")
    async def models(self) -> ModelList:
        self._need("llm")
        return chat.models(self.llm_name)

    @app.post("/v1/tts", response_model=SpeechResponse, tags=["audio"],
              summary="Text-to-speech: WAV (16-bit PCM) or a JSON File",
              responses={200: {"content": {"audio/wav": {}}, **BINARY}})
    async def tts(self, body: SpeechRequest):
        self._need("tts")
        return await media.speech(self.tts, body)

    @app.post("/v1/image-to-video", response_model=VideoResponse, tags=["video"],
              summary="Stable Video Diffusion: an image → an MP4 (H.264)",
              responses={200: {"content": {"video/mp4": {}}, **BINARY}})
    async def image_to_video(self, body: VideoRequest):
        self._need("video")
        return await media.image_to_video(self.video, self.fetcher, body)

    @app.post("/v1/text-to-video", response_model=VideoResponse, tags=["video"],
              summary="SDXL draws the first frame, Stable Video Diffusion animates it",
              responses={200: {"content": {"video/mp4": {}}, **BINARY}})
    async def text_to_video(self, body: TextToVideoRequest):
        self._need("base", "refiner", "safety", "video")
        return await media.text_to_video(self.base, self.refiner, self.safety, self.video, body)

    @app.post("/v1/text-to-3d", response_model=MeshResponse, tags=["3d"],
              summary="Shap-E: a prompt → a mesh as OBJ, GLB or PLY",
              responses={200: {"content": {"model/obj": {}, "model/gltf-binary": {}}, **BINARY}})
    async def text_to_3d(self, body: MeshRequest):
        self._need("mesh3d")
        return await media.text_to_3d(self.mesh3d, body)

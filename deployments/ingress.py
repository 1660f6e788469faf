"""The HTTP ingress: FastAPI on Ray Serve, composing the pipeline deployments.

It validates (pydantic), authenticates, logs usage and routes; it never runs a model. Route
methods stay on this class (Serve binds only methods of the ingress class itself in a
replica) and delegate to one module per modality in `deployments/routes/`. A pipeline left
out of the YAML has no handle here and its routes answer 404.
"""

# No `from __future__ import annotations`: Serve rebuilds these methods' signatures for FastAPI
# and needs the real classes, not strings.

from datetime import datetime

from fastapi import Query, Request
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.http_app import PUBLIC_GET_PREFIXES, PUBLIC_PATHS, app
from deployments.routes import chat, files, media, playground, queue, sdxl, v2
from deployments.routes import usage as usage_route
from genserve.endpoints import EndpointSpec
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
                 mesh3d: DeploymentHandle | None = None,
                 worker: DeploymentHandle | None = None, llm_name: str | None = None,
                 database_url: str | None = None, max_body_bytes: int = 32 * 1024 * 1024,
                 fetch_allow_hosts: list[str] | None = None, files_location: str | None = None,
                 file_url_ttl_s: int = 3600):
        from deployments.endpoints import Handles
        from genserve.fetch import Fetcher
        from genserve.files import open_file_service
        from genserve.http.auth import ApiKeys
        from genserve.jobs.inputs import FileFetcher
        from genserve.jobs.store import JobStore
        from genserve.usage import UsageLog, default_database_url

        self.base, self.refiner, self.safety = base, refiner, safety
        self.llm, self.tts, self.video, self.mesh3d = llm, tts, video, mesh3d
        self.llm_name = llm_name
        # Jobs reach the workers through the store; the handle only wakes one up early.
        self.worker = worker
        # `.options()` starts a handle's router now rather than at its first call: it learns
        # its deployment's replicas and availability at once, so the first request to a
        # pipeline that failed to deploy is refused (503) instead of waiting for replicas
        # until the request times out.
        for handle in (base, refiner, safety, llm, tts, video, mesh3d, worker):
            if handle is not None:
                handle.options()
        checked = Fetcher(allow_hosts=frozenset(fetch_allow_hosts or ()))
        self.files = open_file_service(files_location, ttl_s=file_url_ttl_s)
        self.files_origin = self.files.download_origin()  # the playground's CSP allows it
        # User URLs: our own uploads are read from storage, the rest is SSRF-checked.
        self.fetcher = FileFetcher(self.files, checked)
        self.handles = Handles(base, refiner, safety, llm, tts, video, mesh3d, llm_name,
                               self.fetcher)
        self.queue = queue.Queue(JobStore(database_url or default_database_url()), self.files,
                                 checked, worker)
        app.state.api_keys = ApiKeys.from_env()
        app.state.usage = UsageLog(database_url)
        app.state.max_body_bytes = max_body_bytes
        app.state.public_paths = PUBLIC_PATHS
        app.state.public_get_prefixes = PUBLIC_GET_PREFIXES

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

    # -- queue (fal wire protocol) -------------------------------------------------------------

    @app.post("/queue/{owner}/{name}", tags=["queue"],
              summary="Submit a job: `{request_id, status_url, response_url, cancel_url}`")
    async def queue_submit(self, owner: str, name: str, request: Request):
        """Body: the endpoint's input (see `/v2/models/{name}` or the native route's schema),
        plus `sync_mode: true` for inline outputs. `?fal_webhook=` gets a signed POST when it
        ends; headers `Idempotency-Key`, `X-Fal-Request-Timeout`, `X-Fal-Queue-Priority`."""
        return await queue.submit(self.queue, queue.app_name(owner, name), request, self.handles)

    @app.get("/queue/{owner}/{name}/requests/{request_id}/status", tags=["queue"],
             summary="IN_QUEUE (queue_position) → IN_PROGRESS (logs) → COMPLETED")
    async def queue_status(self, owner: str, name: str, request_id: str, request: Request):
        return await queue.status(self.queue, request_id, request, queue.app_name(owner, name))

    @app.get("/queue/{owner}/{name}/requests/{request_id}/status/stream", tags=["queue"],
             summary="The status as server-sent events until COMPLETED")
    async def queue_status_stream(self, owner: str, name: str, request_id: str,
                                  request: Request):
        return await queue.status_stream(self.queue, request_id, request,
                                         queue.app_name(owner, name))

    @app.get("/queue/{owner}/{name}/requests/{request_id}", tags=["queue"],
             summary="The job's result (its error status when it failed)")
    async def queue_result(self, owner: str, name: str, request_id: str, request: Request):
        return await queue.result(self.queue, request_id, request, queue.app_name(owner, name))

    @app.put("/queue/{owner}/{name}/requests/{request_id}/cancel", tags=["queue"],
             summary="Cancel: 202 CANCELLATION_REQUESTED, 400 ALREADY_COMPLETED, 404")
    async def queue_cancel(self, owner: str, name: str, request_id: str):
        return await queue.cancel(self.queue, request_id, queue.app_name(owner, name))

    @app.get("/queue/requests/{request_id}/status", tags=["queue"],
             summary="Status by request id alone")
    async def request_status(self, request_id: str, request: Request):
        return await queue.status(self.queue, request_id, request)

    @app.get("/queue/requests/{request_id}/status/stream", tags=["queue"],
             summary="Status stream by request id alone")
    async def request_status_stream(self, request_id: str, request: Request):
        return await queue.status_stream(self.queue, request_id, request)

    @app.get("/queue/requests/{request_id}", tags=["queue"], summary="Result by request id alone")
    async def request_result(self, request_id: str, request: Request):
        return await queue.result(self.queue, request_id, request)

    @app.put("/queue/requests/{request_id}/cancel", tags=["queue"],
             summary="Cancel by request id alone")
    async def request_cancel(self, request_id: str):
        return await queue.cancel(self.queue, request_id)

    @app.post("/run/{owner}/{name}", tags=["queue"],
              summary="Run synchronously (fal's `run`): the result in the response")
    async def run(self, owner: str, name: str, request: Request):
        return await queue.run(self.queue, queue.app_name(owner, name), request, self.handles)

    # -- files ---------------------------------------------------------------------------------

    @app.post("/files/upload", tags=["files"],
              summary="Upload a file (raw body, or one multipart file part); use its `url` as "
                      "any input URL")
    async def upload(self, request: Request):
        return await files.upload(self.files, request)

    @app.get("/files/{key:path}", tags=["files"],
             summary="Download a stored file (signed URL: no API key needed)")
    async def download(self, key: str, request: Request):
        return await files.download(self.files, key, request)

    # -- playground (a web UI over the queue; not API, so not in the OpenAPI document) ---------

    @app.get("/", include_in_schema=False)
    async def playground_page(self):
        return playground.page(self.files_origin)

    @app.get("/playground/static/{path:path}", include_in_schema=False)
    async def playground_static(self, path: str):
        return playground.static(path, self.files_origin)

    @app.get("/playground/endpoints", include_in_schema=False)
    async def playground_endpoints(self) -> dict:
        return playground.catalog(self.handles)

    # -- usage log -----------------------------------------------------------------------------

    @app.get("/usage", tags=["ops"],
             summary="Usage log rows (newest first) with totals overall and per pipeline")
    async def usage(
            self,
            since: datetime | None = Query(None, description="From this time (ISO 8601; "
                                           "no offset = UTC).", examples=["2026-01-01T00:00:00Z"]),
            until: datetime | None = Query(None, description="Before this time (ISO 8601)."),
            endpoint: str | None = Query(None, max_length=512, examples=["/generate"],
                                         description="Request path prefix."),
            pipeline: str | None = Query(None, max_length=64, examples=["sdxl"],
                                         description="Catalog endpoint that served it."),
            status: int | None = Query(None, ge=100, le=599, description="HTTP status code."),
            success: bool | None = Query(None, description="Only successful (true) or failed "
                                         "(false) requests."),
            limit: int = Query(100, ge=1, le=usage_route.MAX_ROWS,
                               description="Rows to return (totals cover every match).")):
        return await usage_route.query(app.state.usage, since, until, endpoint, pipeline, status,
                                       success, limit)

    # -- Open Inference Protocol v2 (KServe / Triton / Inferless) -------------------------------

    @app.get("/v2", tags=["v2"], summary="Server metadata")
    async def v2_server(self) -> dict:
        return v2.server_metadata()

    @app.get("/v2/health/live", tags=["v2"], summary="Liveness")
    async def v2_live(self) -> dict:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["v2"], summary="Readiness")
    async def v2_ready(self) -> dict:
        return {"ready": True}

    @app.get("/v2/models/{name}", tags=["v2"],
             summary="Model metadata: input/output tensors from the endpoint's schema")
    async def v2_model(self, name: str):
        spec = self._v2_spec(name)
        return spec if not isinstance(spec, EndpointSpec) else v2.model_metadata(name, spec)

    @app.get("/v2/models/{name}/ready", tags=["v2"], summary="Model readiness")
    async def v2_model_ready(self, name: str):
        spec = self._v2_spec(name)
        return spec if not isinstance(spec, EndpointSpec) else {"name": name, "ready": True}

    @app.post("/v2/models/{name}/infer", tags=["v2"], summary="Inference with named tensors")
    async def v2_infer(self, name: str, request: Request):
        from deployments.endpoints import run_endpoint

        spec = self._v2_spec(name)
        if not isinstance(spec, EndpointSpec):
            return spec
        return await v2.infer(request, name, spec.request, spec.response,
                              lambda body: run_endpoint(spec, self.handles, body))

    def _v2_spec(self, name: str):
        """The inference endpoint called ``name``, or the V2-style 404 answer."""
        from genserve.endpoints import ENDPOINTS

        spec = ENDPOINTS.get(name)
        if spec is None or spec.kind != "inference":
            names = sorted(n for n, s in ENDPOINTS.items() if s.kind == "inference")
            return v2.error_response(404, f"unknown model {name!r}; available: {names}")
        if any(getattr(self.handles, n) is None for n in spec.needs):
            return v2.error_response(404, f"model {name!r} is not deployed on this server")
        return spec


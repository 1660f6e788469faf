"""The HTTP ingress: FastAPI on Ray Serve, composing the pipeline deployments.

It validates (pydantic), authenticates, logs usage and routes; it never runs a model. Route
methods stay on this class (Serve binds only methods of the ingress class itself in a
replica) and delegate to one module per modality in `deployments/routes/`.
"""

# No `from __future__ import annotations`: Serve rebuilds these methods' signatures for FastAPI
# and needs the real classes, not strings.

from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.http_app import PUBLIC_PATHS, app
from deployments.routes import sdxl
from genserve.schemas.sdxl import GenerateRequest, GenerateResponse


@serve.deployment(max_ongoing_requests=64)
@serve.ingress(app)
class Ingress:
    def __init__(self, base: DeploymentHandle, refiner: DeploymentHandle,
                 safety: DeploymentHandle, database_url: str | None = None,
                 max_body_bytes: int = 32 * 1024 * 1024):
        from genserve.http.auth import ApiKeys
        from genserve.usage import UsageLog

        self.base, self.refiner, self.safety = base, refiner, safety
        app.state.api_keys = ApiKeys.from_env()
        app.state.usage = UsageLog(database_url)
        app.state.max_body_bytes = max_body_bytes
        app.state.public_paths = PUBLIC_PATHS

    @app.get("/healthz", summary="Liveness of the ingress", tags=["ops"])
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.post("/generate", response_model=GenerateResponse, tags=["sdxl"],
              summary="SDXL text-to-image / image-to-image (DataCrunch-compatible)")
    async def generate(self, body: GenerateRequest) -> GenerateResponse:
        """Also the Python entry point: ``app_handle.generate.remote(GenerateRequest(...))``."""
        return await sdxl.generate(self.base, self.refiner, self.safety, body)

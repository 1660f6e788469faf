"""The FastAPI app the ingress serves: middleware, error mapping, OpenAPI metadata.

Route handlers live in `deployments/routes/` as mixins of the `Ingress` class; Serve binds
every route whose method belongs to a class in the ingress's MRO.
"""

from contextlib import asynccontextmanager

from fastapi import FastAPI

from genserve.http import errors
from genserve.http.middleware import ApiKeyMiddleware, BodyLimitMiddleware, UsageLogMiddleware

PUBLIC_PATHS = frozenset({"/healthz", "/docs", "/docs/oauth2-redirect", "/openapi.json",
                          "/v2/health/live", "/v2/health/ready",
                          "/"})  # the playground page
# Stored files: their signed URL is the credential (checked by the route), so a link works in
# a browser or another service without the API key.
# The playground's page and static files hold no secret (the page asks for the key itself).
PUBLIC_GET_PREFIXES = ("/files/", "/playground/static/")


@asynccontextmanager
async def lifespan(app: FastAPI):
    # Serve installs its own plain-text 503 handlers for backpressure when the replica starts
    # (after this module set ours); put ours back so an overload answers with JSON and
    # Retry-After, and rebuild the middleware stack, which captured the handlers.
    errors.install_overload(app)
    app.middleware_stack = None
    yield


app = FastAPI(
    lifespan=lifespan,
    title="genserve",
    version="0.1.0",
    description="Self-hosted generative models on Ray Serve. Authenticate with "
                "`Authorization: Key <key>` (or `Bearer <key>`); `/healthz` and these docs "
                "are public.",
)
# Added in reverse order of execution: usage log (outermost, so it sees 401s and 413s too),
# then the body limit, then the key check, then the routes.
app.add_middleware(ApiKeyMiddleware)
app.add_middleware(BodyLimitMiddleware)
app.add_middleware(UsageLogMiddleware)
errors.install(app)

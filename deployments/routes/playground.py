"""The playground: a web page at `/` whose forms are built from each endpoint's JSON schema and
submit through the queue API, for the Ingress to delegate to.

Three routes: the page (public, like `/docs`: it holds no secret and asks for the API key
itself), its static files under `/playground/static/` (public; the page, scripts, styles and
the 3D viewer vendored from npm by `make playground`), and `/playground/endpoints`, the job
catalog with input schemas, which needs the key like every other API route. None is in the
OpenAPI document: they are a UI, not API.

Everything the page runs comes from this server: the Content-Security-Policy allows our own
origin only, plus the hash of the page's one inline script, its import map (browsers read
import maps only inline). The one other origin is where results live when storage is S3: its
presigned URLs are allowed as images, media and fetches (the 3D viewer fetches its mesh, which
needs the bucket's CORS rules to allow this server's origin).
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from pathlib import Path

from fastapi.responses import Response

import genserve.playground
from genserve.endpoints import ENDPOINTS
from genserve.errors import NotFound

STATIC_DIR = Path(genserve.playground.__file__).resolve().parent
STATIC_PREFIX = "/playground/static/"
# What may be served from STATIC_DIR, by suffix: never the package's .py files.
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml",
                 ".txt": "text/plain; charset=utf-8"}
_INLINE_SCRIPT = re.compile(r"<script type=\"importmap\">(.*?)</script>", re.S)
# Outputs are same-origin signed `/files/` URLs, S3 presigned URLs ({files}), or `data:` URIs
# with `sync_mode`; blob: is what three.js's loaders use for embedded textures.
_CSP = ("default-src 'self'; script-src 'self' {hashes}; style-src 'self'; "
        "img-src 'self' data: blob:{files}; media-src 'self' data: blob:{files}; "
        "connect-src 'self'{files}; "
        "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            # Our own files change with the code; revalidating each time costs little here.
            "Cache-Control": "no-cache"}


@cache
def _page(files_origin: str | None) -> tuple[bytes, str]:
    """The page and its Content-Security-Policy (read once per replica). ``files_origin``:
    where result files are downloaded from when not from this server (S3)."""
    html = (STATIC_DIR / "index.html").read_text()
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(m.encode()).digest()).decode() + "'"
        for m in _INLINE_SCRIPT.findall(html))
    return html.encode(), _CSP.format(hashes=hashes,
                                      files=f" {files_origin}" if files_origin else "")


def csp(files_origin: str | None = None) -> str:
    return _page(files_origin)[1]


def page(files_origin: str | None = None) -> Response:
    html, policy = _page(files_origin)
    return Response(html, media_type=CONTENT_TYPES[".html"],
                    headers={**_HEADERS, "Content-Security-Policy": policy})


def static(path: str, files_origin: str | None = None) -> Response:
    """A file under STATIC_DIR with an allowed suffix; 404 for anything else (including a path
    that climbs out of the directory)."""
    target = (STATIC_DIR / path).resolve()
    if not target.is_relative_to(STATIC_DIR) or target.suffix not in CONTENT_TYPES \
            or not target.is_file():
        raise NotFound(f"no playground file {path[:200]!r}", field="path")
    return Response(target.read_bytes(), media_type=CONTENT_TYPES[target.suffix],
                    headers={**_HEADERS, "Content-Security-Policy": csp(files_origin)})


@cache
def _schemas() -> dict[str, dict]:
    return {name: spec.request.model_json_schema() for name, spec in ENDPOINTS.items()}


def catalog(handles) -> dict:
    """Every job endpoint with its input JSON schema and whether this server runs it (a
    pipeline left out of the YAML has no handle)."""
    schemas = _schemas()
    return {"endpoints": [
        {"name": name, "app_id": spec.app_id, "kind": spec.kind, "summary": spec.summary,
         "deployed": all(getattr(handles, n) is not None for n in spec.needs),
         "input_schema": schemas[name]}
        for name, spec in ENDPOINTS.items()]}

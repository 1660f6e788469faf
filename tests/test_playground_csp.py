"""The playground's Content-Security-Policy when results live in S3: presigned URLs point at
the S3 endpoint, not at this server, and the page must be allowed to show them.

A real moto S3 server on loopback stores the image; headless Chromium enforces the policy the
playground sends, on a page from a loopback HTTP server of the test's own (no Serve app is
needed; a page from loopback may load from loopback under Chromium's local-network rules).
The policy without the S3 origin is the control that shows the check can fail.
"""

from __future__ import annotations

import html
import http.server
import io
import re
import threading
import uuid

import pytest
from PIL import Image

from deployments.routes import playground
from genserve.files import FileService
from genserve.storage import LocalStorage, S3Storage
from tests.test_playground import browser  # noqa: F401  (the Chromium fixture)
from tests.test_storage_sources import s3_endpoint  # noqa: F401  (the moto server fixture)

def png(width: int = 2, height: int = 3) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()




def directive(policy: str, name: str) -> list[str]:
    found = re.search(rf"(?:^|;)\s*{name}\s+([^;]*)", policy)
    assert found, f"no {name} in {policy!r}"
    return found.group(1).split()


@pytest.fixture
def page_server():
    """A loopback HTTP server answering every GET with ``page["body"]`` under
    ``page["policy"]`` as its Content-Security-Policy."""
    page: dict[str, str] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = page["body"].encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Security-Policy", page["policy"])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    page["url"] = f"http://127.0.0.1:{server.server_address[1]}/playground"
    yield page
    server.shutdown()
    server.server_close()


@pytest.fixture
def s3_service(s3_endpoint):  # noqa: F811
    import boto3

    bucket = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return FileService(S3Storage(bucket, "genserve/files"), "secret-" + "x" * 32)


def test_local_storage_allows_only_this_server(tmp_path):
    service = FileService(LocalStorage(tmp_path), "secret-" + "x" * 32)
    assert service.download_origin() is None
    policy = playground.csp(service.download_origin())
    for name in ("img-src", "media-src"):
        assert directive(policy, name) == ["'self'", "data:", "blob:"]
    assert directive(policy, "connect-src") == ["'self'"]


def test_s3_origin_is_the_presigned_urls_origin(s3_service, s3_endpoint):  # noqa: F811
    origin = s3_service.download_origin()
    assert origin == s3_endpoint  # a custom endpoint: path-style URLs on it
    key = s3_service.save_upload(png(), "image/png", "out.png").key
    assert s3_service.storage.presigned_url(key, 60).startswith(origin + "/")
    policy = playground.csp(origin)
    for name in ("img-src", "media-src", "connect-src"):
        assert origin in directive(policy, name), name
    assert directive(policy, "script-src")[0] == "'self'"  # scripts stay our own
    assert origin not in directive(policy, "script-src")
    # The page and its static files carry the same policy.
    assert playground.page(origin).headers["content-security-policy"] == policy
    assert playground.static("app.js", origin).headers["content-security-policy"] == policy


@pytest.mark.parametrize("allowed", [True, False], ids=["s3-origin-allowed", "control"])
def test_chromium_shows_an_s3_result_under_the_policy(browser, s3_service,  # noqa: F811
                                                     page_server, allowed):
    key = s3_service.save_upload(png(), "image/png", "out.png").key
    url = s3_service.storage.presigned_url(key, 300, "out.png", "image/png")
    page_server["policy"] = playground.csp(s3_service.download_origin() if allowed else None)
    page_server["body"] = f'<!doctype html><img id="result" src="{html.escape(url)}">'
    context = browser.new_context()
    violations: list[str] = []
    try:
        tab = context.new_page()
        tab.on("console", lambda m: violations.append(m.text)
               if "Content Security Policy" in m.text else None)
        tab.goto(page_server["url"])
        tab.wait_for_function("() => document.getElementById('result').complete",
                              timeout=15_000)
        size = tab.eval_on_selector("#result", "i => [i.naturalWidth, i.naturalHeight]")
    finally:
        context.close()
    if allowed:
        assert size == [2, 3] and not violations, (size, violations)
    else:
        assert size == [0, 0] and any("img-src" in v for v in violations), (size, violations)

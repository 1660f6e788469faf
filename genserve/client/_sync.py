"""The blocking client. `_async.py` is the same code with ``await``; keep the two in step."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx

from genserve.client._common import (
    DEFAULT_TIMEOUT_S,
    Completed,
    GenserveClientError,
    RetryPolicy,
    Status,
    app_path,
    auth_headers,
    event_status,
    parse_status,
    read_cancel,
    read_json,
    read_submitted,
    request_path,
    resolve_key,
    resolve_url,
    same_origin,
    submit_request,
    tls_verify,
    unreachable,
    usage_params,
)
from genserve.client._files import (
    content_type_for,
    decode_data_uri,
    dest_path,
    extension_for,
    open_upload,
    output_files,
    unique_path,
)
from genserve.client._sse import SSEDecoder

USER_AGENT = "genserve-client/0.1"


@dataclass
class RequestHandle:
    """A submitted job. ``client.submit(...)`` returns one; ``client.handle(id)`` rebuilds one."""

    request_id: str
    client: Client = field(repr=False)
    response_url: str | None = None
    status_url: str | None = None
    cancel_url: str | None = None
    queue_position: int | None = None

    def status(self, logs: bool = False) -> Status:
        return self.client.status(self.request_id, logs=logs)

    def result(self) -> dict[str, Any]:
        return self.client.result(self.request_id)

    def cancel(self) -> bool:
        return self.client.cancel(self.request_id)

    def stream(self, logs: bool = True) -> Iterator[Status]:
        return self.client.stream(self.request_id, logs=logs)

    def wait(self, on_update: Callable[[Status], None] | None = None,
             logs: bool = True) -> dict[str, Any]:
        """Follow the job to the end (``on_update`` sees every status), then its output."""
        for status in self.stream(logs=logs):
            if on_update is not None:
                on_update(status)
        return self.result()


class Client:
    """Talks to a genserve server.

    >>> with Client("http://127.0.0.1:8000", key="…") as c:              # doctest: +SKIP
    ...     out = c.subscribe("sdxl", {"prompt": "a cat", "num_inference_steps": 4})
    ...     c.download_outputs(out, "out/")

    ``base_url`` defaults to ``$GENSERVE_URL`` (else ``http://127.0.0.1:8000``), ``key`` to
    ``$GENSERVE_API_KEY`` / ``$GENSERVE_KEY``. ``verify``: ``True`` (default) trusts certifi's
    store or ``$SSL_CERT_FILE``; a CA bundle path or an ``ssl.SSLContext`` trusts a private CA;
    ``False`` turns checking off.
    """

    def __init__(self, base_url: str | None = None, key: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, *, verify: Any = True,
                 retry: RetryPolicy | None = None):
        self.base_url = resolve_url(base_url)
        self.key = resolve_key(key)
        self.retry = retry or RetryPolicy()
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout,
                                  verify=tls_verify(verify),
                                  headers={"User-Agent": USER_AGENT})
        # Jobs may queue and run for minutes: no read deadline, the others stay.
        self._long = httpx.Timeout(timeout, read=None)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- plumbing --------------------------------------------------------------------------

    def _send(self, method: str, url: str, *, idempotent: bool, with_key: bool = True,
              stream: bool = False, follow_redirects: bool = False,
              headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        headers = {**(auth_headers(self.key) if with_key else {}), **(headers or {})}
        content = kwargs.get("content")
        attempt = 0
        while True:
            if hasattr(content, "seek"):
                content.seek(0)  # a retried upload starts again from the first byte
            request = self._http.build_request(method, url, headers=headers, **kwargs)
            try:
                response = self._http.send(request, stream=stream,
                                           follow_redirects=follow_redirects)
            except httpx.TransportError as exc:
                if not self.retry.retry_error(exc, attempt, idempotent):
                    raise unreachable(str(request.url), exc) from exc
                time.sleep(self.retry.delay(attempt))
            else:
                if not self.retry.retry_response(response, attempt, idempotent):
                    return response
                response.close()
                time.sleep(self.retry.delay(attempt, response))
            attempt += 1

    def handle(self, request_id: str, **urls: Any) -> RequestHandle:
        return RequestHandle(request_id, self, **urls)

    # -- jobs ------------------------------------------------------------------------------

    def run(self, endpoint: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """Run and wait in one call (``POST /run/genserve/<endpoint>``) → the output.
        Not retried once sent: the server may already be running it."""
        response = self._send("POST", f"/run/{app_path(endpoint)}", idempotent=False,
                              json=arguments, timeout=self._long)
        return read_json(response)

    def submit(self, endpoint: str, arguments: dict[str, Any], *,
               webhook_url: str | None = None, idempotency_key: str | None = None,
               start_timeout: float | None = None, priority: str | None = None,
               sync_mode: bool = False) -> RequestHandle:
        """Queue a job → its handle. ``start_timeout``: seconds it may wait to start;
        ``priority``: ``"normal"`` or ``"low"``; ``sync_mode``: outputs inline as data: URIs."""
        kwargs = submit_request(arguments, webhook_url=webhook_url,
                                idempotency_key=idempotency_key, start_timeout=start_timeout,
                                priority=priority, sync_mode=sync_mode)
        # Safe to retry: the Idempotency-Key makes a repeated POST return the same job.
        response = self._send("POST", f"/queue/{app_path(endpoint)}", idempotent=True, **kwargs)
        return RequestHandle(client=self, **vars(read_submitted(response)))

    def status(self, request_id: str, logs: bool = False) -> Status:
        response = self._send("GET", request_path(request_id, "/status"), idempotent=True,
                              params={"logs": "1"} if logs else None)
        return parse_status(read_json(response))

    def result(self, request_id: str) -> dict[str, Any]:
        """The output; `GenserveClientError` if the job failed, was cancelled (``job_failed``
        set) or has not finished (400), or the id is unknown (404)."""
        return read_json(self._send("GET", request_path(request_id), idempotent=True))

    def usage(self, **filters: Any) -> dict[str, Any]:
        """The server's usage log: ``{rows, totals, by_pipeline, filters}``. Filters:
        ``since``/``until`` (datetime or ISO string), ``endpoint`` (path prefix), ``pipeline``,
        ``status``, ``success``, ``limit``."""
        return read_json(self._send("GET", "/usage", idempotent=True,
                                   params=usage_params(**filters)))

    def cancel(self, request_id: str) -> bool:
        """True: cancellation requested; False: the job had already completed."""
        return read_cancel(self._send("PUT", request_path(request_id, "/cancel"),
                                      idempotent=True))

    def stream(self, request_id: str, logs: bool = True) -> Iterator[Status]:
        """Every status change until `Completed` (the last item). A dropped stream is
        reopened (the server starts with the current status)."""
        params = {"logs": "1"} if logs else None
        attempt = 0
        while True:
            try:
                response = self._send("GET", request_path(request_id, "/status/stream"),
                                      idempotent=True, stream=True, params=params,
                                      timeout=self._long)
                try:
                    if not response.is_success:
                        response.read()
                        read_json(response)  # raises the server's error
                    decoder = SSEDecoder()
                    for chunk in response.iter_bytes():
                        for event in decoder.feed(chunk):
                            status = event_status(event)
                            attempt = 0  # progress: the retry budget starts over
                            yield status
                            if isinstance(status, Completed):
                                return
                finally:
                    response.close()
            except httpx.TransportError as exc:
                if attempt >= self.retry.max_retries:
                    raise unreachable(self.base_url, exc) from exc
            if attempt >= self.retry.max_retries:
                raise GenserveClientError(None, f"status stream of {request_id} ended before "
                                          "the request completed")
            time.sleep(self.retry.delay(attempt))
            attempt += 1

    def subscribe(self, endpoint: str, arguments: dict[str, Any],
                  on_update: Callable[[Status], None] | None = None,
                  **submit_options: Any) -> dict[str, Any]:
        """Submit, follow the status stream (``on_update`` sees each status), return the
        output."""
        return self.submit(endpoint, arguments, **submit_options).wait(on_update)

    # -- files -----------------------------------------------------------------------------

    def upload(self, data: str | Path | bytes, content_type: str | None = None,
               file_name: str | None = None) -> dict[str, Any]:
        """Store a file on the server → File ``{url, content_type, file_name, file_size}``
        (``url`` signed and expiring: pass it as e.g. ``images_data_url``)."""
        content, name = open_upload(data, file_name)
        content_type = content_type or content_type_for(name)
        name = name or "upload" + extension_for(content_type)
        try:
            response = self._send("POST", "/files/upload", idempotent=False, content=content,
                                  params={"file_name": name}, timeout=self._long,
                                  headers={"Content-Type": content_type})
        finally:
            if hasattr(content, "close"):
                content.close()
        return read_json(response)

    def download(self, file: str | dict[str, Any], dest: str | Path) -> Path:
        """Save a result file (a File dict or its URL) to ``dest`` (a file path, or an existing
        directory / a path ending in ``/`` to use the file's name) → the path written.
        ``data:`` URIs are decoded here; the key goes only to this server's own URLs."""
        url, name = (file["url"], file.get("file_name")) if isinstance(file, dict) else (file, None)
        if url.startswith("data:"):
            data, content_type = decode_data_uri(url)
            path = dest_path(dest, name, url, content_type)
            _write_atomic(path, [data])
            return path
        url = urljoin(self.base_url + "/", url)
        response = self._send("GET", url, idempotent=True, stream=True, follow_redirects=True,
                              with_key=same_origin(url, self.base_url), timeout=self._long)
        try:
            if not response.is_success:
                response.read()
                read_json(response)
            path = dest_path(dest, name, url, response.headers.get("content-type"))
            _write_atomic(path, response.iter_bytes())
        finally:
            response.close()
        return path

    def download_outputs(self, output: Any, directory: str | Path) -> dict[str, Path]:
        """Every file in a result (each ``{"url": …}``) into ``directory`` → JSON path
        (``"images.0"``) → local path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        taken: set[Path] = set()
        saved = {}
        for f in output_files(output):
            saved[f.where] = self.download(f.url, unique_path(directory, f.suggested_name(),
                                                              taken))
        return saved


def _write_atomic(path: Path, chunks: Any) -> None:
    # A partial download never sits under the final name.
    part = path.with_name(path.name + ".part")
    try:
        with part.open("wb") as f:
            for chunk in chunks:
                f.write(chunk)
        part.replace(path)
    finally:
        part.unlink(missing_ok=True)

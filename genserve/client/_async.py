"""The asyncio client: `_sync.py` with ``await`` (same methods, same semantics)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
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
from genserve.client._sync import USER_AGENT

OnUpdate = Callable[[Status], Awaitable[None] | None]


@dataclass
class AsyncRequestHandle:
    """A submitted job (async). ``client.submit(...)`` returns one."""

    request_id: str
    client: AsyncClient = field(repr=False)
    response_url: str | None = None
    status_url: str | None = None
    cancel_url: str | None = None
    queue_position: int | None = None

    async def status(self, logs: bool = False) -> Status:
        return await self.client.status(self.request_id, logs=logs)

    async def result(self) -> dict[str, Any]:
        return await self.client.result(self.request_id)

    async def cancel(self) -> bool:
        return await self.client.cancel(self.request_id)

    def stream(self, logs: bool = True) -> AsyncIterator[Status]:
        return self.client.stream(self.request_id, logs=logs)

    async def wait(self, on_update: OnUpdate | None = None, logs: bool = True) -> dict[str, Any]:
        """Follow the job to the end (``on_update``, plain or async, sees every status), then
        its output."""
        async for status in self.stream(logs=logs):
            if on_update is not None:
                maybe = on_update(status)
                if asyncio.iscoroutine(maybe):
                    await maybe
        return await self.result()


class AsyncClient:
    """`Client` for asyncio code.

    >>> async with AsyncClient() as c:                                     # doctest: +SKIP
    ...     handle = await c.submit("sdxl", {"prompt": "a cat"})
    ...     async for status in handle.stream():
    ...         print(status)
    ...     out = await handle.result()
    """

    def __init__(self, base_url: str | None = None, key: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, *, verify: Any = True,
                 retry: RetryPolicy | None = None):
        self.base_url = resolve_url(base_url)
        self.key = resolve_key(key)
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout,
                                       verify=tls_verify(verify),
                                       headers={"User-Agent": USER_AGENT})
        self._long = httpx.Timeout(timeout, read=None)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- plumbing --------------------------------------------------------------------------

    async def _send(self, method: str, url: str, *, idempotent: bool, with_key: bool = True,
                    stream: bool = False, follow_redirects: bool = False,
                    headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        headers = {**(auth_headers(self.key) if with_key else {}), **(headers or {})}
        attempt = 0
        while True:
            request = self._http.build_request(method, url, headers=headers, **kwargs)
            try:
                response = await self._http.send(request, stream=stream,
                                                 follow_redirects=follow_redirects)
            except httpx.TransportError as exc:
                if not self.retry.retry_error(exc, attempt, idempotent):
                    raise unreachable(str(request.url), exc) from exc
                await asyncio.sleep(self.retry.delay(attempt))
            else:
                if not self.retry.retry_response(response, attempt, idempotent):
                    return response
                await response.aclose()
                await asyncio.sleep(self.retry.delay(attempt, response))
            attempt += 1

    def handle(self, request_id: str, **urls: Any) -> AsyncRequestHandle:
        return AsyncRequestHandle(request_id, self, **urls)

    # -- jobs ------------------------------------------------------------------------------

    async def run(self, endpoint: str, arguments: dict[str, Any]) -> dict[str, Any]:
        response = await self._send("POST", f"/run/{app_path(endpoint)}", idempotent=False,
                                    json=arguments, timeout=self._long)
        return read_json(response)

    async def submit(self, endpoint: str, arguments: dict[str, Any], *,
                     webhook_url: str | None = None, idempotency_key: str | None = None,
                     start_timeout: float | None = None, priority: str | None = None,
                     sync_mode: bool = False) -> AsyncRequestHandle:
        kwargs = submit_request(arguments, webhook_url=webhook_url,
                                idempotency_key=idempotency_key, start_timeout=start_timeout,
                                priority=priority, sync_mode=sync_mode)
        response = await self._send("POST", f"/queue/{app_path(endpoint)}", idempotent=True,
                                    **kwargs)
        return AsyncRequestHandle(client=self, **vars(read_submitted(response)))

    async def status(self, request_id: str, logs: bool = False) -> Status:
        response = await self._send("GET", request_path(request_id, "/status"), idempotent=True,
                                    params={"logs": "1"} if logs else None)
        return parse_status(read_json(response))

    async def result(self, request_id: str) -> dict[str, Any]:
        return read_json(await self._send("GET", request_path(request_id), idempotent=True))

    async def usage(self, **filters: Any) -> dict[str, Any]:
        """The server's usage log: ``{rows, totals, by_pipeline, filters}``. Filters:
        ``since``/``until`` (datetime or ISO string), ``endpoint`` (path prefix), ``pipeline``,
        ``status``, ``success``, ``limit``."""
        return read_json(await self._send("GET", "/usage", idempotent=True,
                                         params=usage_params(**filters)))

    async def cancel(self, request_id: str) -> bool:
        return read_cancel(await self._send("PUT", request_path(request_id, "/cancel"),
                                            idempotent=True))

    async def stream(self, request_id: str, logs: bool = True) -> AsyncIterator[Status]:
        params = {"logs": "1"} if logs else None
        attempt = 0
        while True:
            try:
                response = await self._send("GET", request_path(request_id, "/status/stream"),
                                            idempotent=True, stream=True, params=params,
                                            timeout=self._long)
                try:
                    if not response.is_success:
                        await response.aread()
                        read_json(response)
                    decoder = SSEDecoder()
                    async for chunk in response.aiter_bytes():
                        for event in decoder.feed(chunk):
                            status = event_status(event)
                            attempt = 0
                            yield status
                            if isinstance(status, Completed):
                                return
                finally:
                    await response.aclose()
            except httpx.TransportError as exc:
                if attempt >= self.retry.max_retries:
                    raise unreachable(self.base_url, exc) from exc
            if attempt >= self.retry.max_retries:
                raise GenserveClientError(None, f"status stream of {request_id} ended before "
                                          "the request completed")
            await asyncio.sleep(self.retry.delay(attempt))
            attempt += 1

    async def subscribe(self, endpoint: str, arguments: dict[str, Any],
                        on_update: OnUpdate | None = None,
                        **submit_options: Any) -> dict[str, Any]:
        handle = await self.submit(endpoint, arguments, **submit_options)
        return await handle.wait(on_update)

    # -- files -----------------------------------------------------------------------------

    async def upload(self, data: str | Path | bytes, content_type: str | None = None,
                     file_name: str | None = None) -> dict[str, Any]:
        source, name = open_upload(data, file_name)
        if not isinstance(source, bytes):
            # httpx's async transport cannot stream a plain file; uploads are bounded by the
            # server's body limit, so reading it (off the event loop) is fine.
            with source:
                source = await asyncio.to_thread(source.read)
        content_type = content_type or content_type_for(name)
        name = name or "upload" + extension_for(content_type)
        response = await self._send("POST", "/files/upload", idempotent=False, content=source,
                                    params={"file_name": name}, timeout=self._long,
                                    headers={"Content-Type": content_type})
        return read_json(response)

    async def download(self, file: str | dict[str, Any], dest: str | Path) -> Path:
        url, name = (file["url"], file.get("file_name")) if isinstance(file, dict) else (file, None)
        if url.startswith("data:"):
            data, content_type = decode_data_uri(url)
            path = dest_path(dest, name, url, content_type)
            await asyncio.to_thread(_write_bytes, path, data)
            return path
        url = urljoin(self.base_url + "/", url)
        response = await self._send("GET", url, idempotent=True, stream=True,
                                    follow_redirects=True, timeout=self._long,
                                    with_key=same_origin(url, self.base_url))
        try:
            if not response.is_success:
                await response.aread()
                read_json(response)
            path = dest_path(dest, name, url, response.headers.get("content-type"))
            part = path.with_name(path.name + ".part")
            try:
                with part.open("wb") as f:
                    async for chunk in response.aiter_bytes():
                        f.write(chunk)
                part.replace(path)
            finally:
                part.unlink(missing_ok=True)
        finally:
            await response.aclose()
        return path

    async def download_outputs(self, output: Any, directory: str | Path) -> dict[str, Path]:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        taken: set[Path] = set()
        saved = {}
        for f in output_files(output):
            saved[f.where] = await self.download(
                f.url, unique_path(directory, f.suggested_name(), taken))
        return saved


def _write_bytes(path: Path, data: bytes) -> None:
    part = path.with_name(path.name + ".part")
    part.write_bytes(data)
    part.replace(path)

"""File upload and signed download routes."""

from __future__ import annotations

import asyncio

from fastapi import Request
from fastapi.responses import Response

from genserve.errors import InvalidInput


async def upload(files, request: Request) -> dict:
    """The raw body is the file; its name from `?file_name=` (or `X-File-Name`), its type from
    Content-Type. The body size limit of every request applies."""
    data = await request.body()
    if not data:
        raise InvalidInput("the request body (the file) is empty", field="body")
    name = request.query_params.get("file_name") or request.headers.get("x-file-name")
    content_type = request.headers.get("content-type")
    stored = await asyncio.to_thread(files.save_upload, data, content_type, name)
    return files.upload_file(stored, str(request.base_url).rstrip("/")).model_dump()


async def download(files, key: str, request: Request) -> Response:
    files.verify(key, request.query_params.get("expires", ""),
                 request.query_params.get("signature", ""))
    body = await asyncio.to_thread(files.open, key)
    return Response(body.data, media_type=body.content_type,
                    headers={**body.headers(), "Cache-Control": "private, max-age=300"})

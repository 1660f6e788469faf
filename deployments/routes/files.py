"""File upload and signed download routes."""

from __future__ import annotations

import asyncio

from fastapi import Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from genserve.errors import InvalidInput

# A form upload carries one file and a few fields at most; a body of thousands of parts is
# refused as soon as the parser counts past this, before the parts are read.
MAX_FORM_FIELDS = 8


async def _form_file(request: Request) -> tuple[bytes, str | None, str | None]:
    try:
        form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS)
    except HTTPException as exc:  # Starlette's answer to a malformed or oversized form
        raise InvalidInput(f"multipart body refused: {exc.detail} (one file part and at most "
                           f"{MAX_FORM_FIELDS} fields)", field="body") from None
    try:
        parts = [v for v in form.values() if isinstance(v, UploadFile)]
        if len(parts) != 1:
            raise InvalidInput("a multipart upload carries exactly one file part "
                               f"(got {len(parts)})", field="file")
        part = parts[0]
        return await part.read(), part.content_type, part.filename
    finally:
        await form.close()


async def upload(files, request: Request) -> dict:
    """The raw body is the file; its name from `?file_name=` (or `X-File-Name`), its type from
    Content-Type. A `multipart/form-data` body (`curl -F file=@photo.jpg`) gives its one file
    part instead. The body size limit of every request applies."""
    content_type = request.headers.get("content-type")
    name = request.query_params.get("file_name") or request.headers.get("x-file-name")
    if (content_type or "").lower().startswith("multipart/form-data"):
        data, content_type, part_name = await _form_file(request)
        name = name or part_name
    else:
        data = await request.body()
    if not data:
        raise InvalidInput("the request body (the file) is empty", field="body")
    stored = await asyncio.to_thread(files.save_upload, data, content_type, name)
    return files.upload_file(stored, str(request.base_url).rstrip("/")).model_dump()


async def download(files, key: str, request: Request) -> Response:
    files.verify(key, request.query_params.get("expires", ""),
                 request.query_params.get("signature", ""))
    body = await asyncio.to_thread(files.open, key)
    return Response(body.data, media_type=body.content_type,
                    headers={**body.headers(), "Cache-Control": "private, max-age=300"})

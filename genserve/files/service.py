"""`FileService`: uploads, download URLs, job outputs as stored files, and file inputs.

>>> files = open_file_service()                                  # doctest: +SKIP
>>> stored = files.save_upload(b"...", "image/png", "me.png")    # doctest: +SKIP
>>> files.upload_file(stored, "https://api.example.com").url     # doctest: +SKIP
'https://api.example.com/files/uploads/3f…/me.png?expires=1795…&signature=9c…'
"""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from genserve.errors import GenserveError, InvalidInput, NotFound
from genserve.fetch import Fetcher
from genserve.files.data_uri import decode_data_uri, is_data_uri
from genserve.files.names import (download_headers, normalize_content_type, output_name,
                                  sanitize_file_name)
from genserve.files.outputs import map_files, reference, referenced_key
from genserve.files.urls import Forbidden, LocalUrls, S3Urls
from genserve.schemas.common import File
from genserve.storage import (MAX_PRESIGN_TTL_S, LocalStorage, S3Storage, Storage, check_key,
                              guess_content_type, open_storage)

DOWNLOAD_TTL_S = 3600
# Uploads are inputs for later requests, which may wait in a queue; 7 days is also the
# longest an S3 presigned URL can live.
UPLOAD_TTL_S = MAX_PRESIGN_TTL_S
UPLOADS = "uploads"
# Types that say nothing about a file: curl's default for --data-binary, form encodings and
# "some bytes". The name's suffix knows more.
_UNINFORMATIVE = {"application/octet-stream", "application/x-www-form-urlencoded",
                  "multipart/form-data"}


@dataclass(frozen=True)
class StoredFile:
    """A file just written to storage (no URL yet: those are made per request)."""

    key: str
    content_type: str
    file_name: str
    file_size: int


class FileBody(NamedTuple):
    """A stored file read back for the ``GET /files/{key}`` route."""

    data: bytes
    content_type: str
    file_name: str

    def headers(self) -> dict[str, str]:
        """Response headers to send it with (type, disposition, nosniff, sandbox CSP)."""
        return download_headers(self.content_type, self.file_name)


class FileService:
    """Files in ``storage`` and the URLs that reach them.

    With `S3Storage` URLs are S3 presigned GET URLs; with any other storage they point at our
    own ``/files/{key}`` route, signed with ``secret``. ``ttl_s`` is how long output URLs
    live, ``upload_ttl_s`` how long upload URLs do.
    """

    def __init__(self, storage: Storage, secret: str, ttl_s: int = DOWNLOAD_TTL_S,
                 upload_ttl_s: int = UPLOAD_TTL_S):
        limit = MAX_PRESIGN_TTL_S if isinstance(storage, S3Storage) else 10 * 365 * 86400
        for name, value in (("ttl_s", ttl_s), ("upload_ttl_s", upload_ttl_s)):
            if not 1 <= value <= limit:
                raise ValueError(f"`{name}` must be 1 to {limit} s but is {value}")
        self.storage = storage
        self.ttl_s = ttl_s
        self.upload_ttl_s = upload_ttl_s
        self._local = LocalUrls(secret)
        self._s3 = S3Urls(storage) if isinstance(storage, S3Storage) else None

    def download_origin(self) -> str | None:
        """Where download URLs point when it is not this server: the S3 endpoint's origin
        (``scheme://host[:port]``), which a web page showing results must allow. None when
        downloads go through our own `/files/` route."""
        if self._s3 is None:
            return None
        # boto3 builds the URL offline; a probe key gives the host it uses for every key
        # (virtual-hosted or path style, custom endpoint or not).
        url = urlsplit(self.storage.presigned_url("origin-probe", 60))
        return f"{url.scheme}://{url.netloc.rpartition('@')[2]}"

    # -- uploads and URLs ----------------------------------------------------------------------

    def save_upload(self, data: bytes, content_type: str | None,
                    file_name: str | None) -> StoredFile:
        """Store an upload at ``uploads/<uuid4 hex>/<safe name>``.

        The type is ``content_type`` when it is a real ``type/subtype`` (parameters dropped)
        that says something, else guessed from the name; a name without a suffix gets the
        type's (``"photo"`` + ``image/png`` → ``"photo.png"``).
        """
        given = normalize_content_type(content_type)
        given = None if given in _UNINFORMATIVE else given
        name = sanitize_file_name(file_name, given)
        content_type = given or guess_content_type(name)
        key = f"{UPLOADS}/{uuid.uuid4().hex}/{name}"
        self.storage.put_bytes(key, data, content_type)
        return StoredFile(key, content_type, name, len(data))

    def upload_file(self, stored: StoredFile, base_url: str) -> File:
        """The `File` answered to an upload; its URL lives ``upload_ttl_s``."""
        return self.file(stored.key, base_url, stored.content_type, stored.file_name,
                         stored.file_size, ttl_s=self.upload_ttl_s)

    def url(self, key: str, base_url: str, ttl_s: int | None = None,
            file_name: str | None = None, content_type: str | None = None) -> str:
        """A download URL for ``key``, valid ``ttl_s`` (default ``self.ttl_s``) from now.

        Local: ``{base_url}/files/{key}?expires=…&signature=…`` (``base_url`` is the
        server's public root, e.g. ``https://api.example.com``). S3: a presigned URL that
        answers with ``content_type`` and ``file_name`` when given (``base_url`` unused).
        """
        ttl = self.ttl_s if ttl_s is None else int(ttl_s)
        if ttl < 1:
            raise ValueError(f"`ttl_s` must be at least 1 but is {ttl}")
        if isinstance(self.storage, S3Storage):
            return self.storage.presigned_url(key, ttl, file_name, content_type)
        return self._local.url(key, base_url, int(time.time()) + ttl)

    def file(self, key: str, base_url: str, content_type: str, file_name: str, size: int,
             ttl_s: int | None = None) -> File:
        """The `File` for a stored object, with a fresh URL."""
        return File(url=self.url(key, base_url, ttl_s, file_name, content_type),
                    content_type=content_type, file_name=file_name, file_size=size)

    # -- the GET /files/{key} route --------------------------------------------------------------

    def verify(self, key: str, expires: int | str, signature: str) -> None:
        """Accept a ``/files/{key}`` request or raise `Forbidden` (HTTP 403): bad key, bad or
        malformed signature, or expired. Existence is `open`'s business (404), checked only
        after this so that nobody can probe for keys without a valid URL."""
        expires_at = self._local.check(key, expires, signature)
        if time.time() >= expires_at:
            raise Forbidden(f"file URL expired at {_iso(expires_at)}; ask for a fresh one "
                            "(read the result again, or upload the file again)")

    def open(self, key: str) -> FileBody:
        """The stored bytes, their type (from the name) and name; `NotFound` if gone."""
        try:
            data = self.storage.read_bytes(check_key(key))
        except (ValueError, FileNotFoundError):
            raise NotFound(f"file {key!r} does not exist (it may have expired and been "
                           "deleted)") from None
        name = PurePosixPath(key).name
        return FileBody(data, guess_content_type(name), name)

    # -- recognising our URLs ----------------------------------------------------------------

    def key_from_url(self, url: str) -> str | None:
        """The key behind one of our download URLs that is still valid; None otherwise.

        Local URLs count when the signature matches, whatever host they name (the signature
        is the proof). S3 URLs count when they are presigned for our bucket and prefix; see
        `S3Urls` for why S3's signature is not checked here.
        """
        own = self._own(url)
        return own[0] if own is not None and time.time() < own[1] else None

    def _own(self, url: str) -> tuple[str, float] | None:
        try:
            if self._s3 is not None:
                return self._s3.parse(url)
            return self._local.parse(url)
        except ValueError:  # urlsplit refuses some malformed URLs ("http://[::1")
            return None

    # -- job outputs -------------------------------------------------------------------------

    def externalize(self, output: Any, prefix: str) -> Any:
        """A copy of ``output`` with every ``{"url": "data:…", …}`` stored at
        ``<prefix>/<n>/<name>`` and its url replaced by ``genserve-file:<key>``.

        ``n`` counts the files in reading order, so names never collide and a retried job
        writes the same keys again; ``name`` is the item's ``file_name`` made safe, else made
        from its type (``image.png``). Other fields stay as they are. A pydantic model is
        dumped to JSON-like values first.
        """
        check_key(prefix)
        if hasattr(output, "model_dump"):
            output = output.model_dump(mode="json")
        numbers = itertools.count()

        def store(item: dict, path: str) -> str | None:
            if not is_data_uri(item["url"]):
                return None
            try:
                data, uri_type = decode_data_uri(item["url"], field=path)
            except InvalidInput as exc:  # our own output: a bug, not the user's fault
                raise GenserveError(f"output {exc.message}") from None
            content_type = (normalize_content_type(item.get("content_type")) or uri_type
                            or "application/octet-stream")
            key = f"{prefix}/{next(numbers)}/{output_name(item.get('file_name'), content_type)}"
            self.storage.put_bytes(key, data, content_type)
            return reference(key)

        return map_files(output, store)

    def resolve(self, output: Any, base_url: str, ttl_s: int | None = None,
                prefix: str | None = None) -> Any:
        """A copy of ``output`` with every ``genserve-file:<key>`` url replaced by a download
        URL made now (so each read gets a fresh expiry).

        With ``prefix`` (the one given to `externalize`) only keys under it are signed: should
        an output ever echo a user's value, a reference to someone else's file stays inert.
        """
        def sign(item: dict, path: str) -> str | None:
            key = referenced_key(item["url"])
            if key is None or (prefix is not None and not key.startswith(f"{prefix}/")):
                return None
            name = item.get("file_name")
            return self.url(key, base_url, ttl_s, name if isinstance(name, str) else None,
                            normalize_content_type(item.get("content_type")))

        return map_files(output, sign)

    # -- job inputs --------------------------------------------------------------------------

    def materialize(self, url: str, field: str,
                    fetcher: Fetcher | None = None) -> tuple[bytes, str | None]:
        """(bytes, content type or None) of a file input named ``field``.

        One of our download URLs is read from storage directly (no HTTP round trip to
        ourselves); a ``data:`` URI is decoded; another http(s) URL goes through ``fetcher``
        (SSRF checks). All three obey ``fetcher.max_bytes``; anything else is `InvalidInput`.
        """
        fetcher = fetcher or Fetcher()
        if not isinstance(url, str):
            raise InvalidInput(f"`{field}`: expected a URL string", field)
        if is_data_uri(url):
            return decode_data_uri(url, field, fetcher.max_bytes)
        scheme = url.partition(":")[0].lower() if ":" in url else ""
        if scheme not in ("http", "https"):
            raise InvalidInput(f"`{field}`: give an http(s) URL or a data: URI, not "
                               f"{scheme + ':' if scheme else 'a bare string'}", field)
        own = self._own(url)
        if own is None:
            return fetcher.fetch(url, field)
        key, expires_at = own
        if time.time() >= expires_at:
            raise InvalidInput(f"`{field}`: this file URL expired at {_iso(expires_at)}; use "
                               "a fresh one or upload the file again", field)
        try:
            size = self.storage.size(key)
            if size > fetcher.max_bytes:
                raise InvalidInput(f"`{field}`: file is {size} bytes; the limit is "
                                   f"{fetcher.max_bytes}", field)
            data = self.storage.read_bytes(key)
        except FileNotFoundError:
            raise InvalidInput(f"`{field}`: the file no longer exists; upload it again",
                               field) from None
        return data, guess_content_type(key)


def open_file_service(location: str | None = None, *, ttl_s: int = DOWNLOAD_TTL_S,
                      upload_ttl_s: int = UPLOAD_TTL_S) -> FileService:
    """The file service for ``location``: None → ``$GENSERVE_STATE_DIR/files`` on local disk,
    ``s3://bucket/prefix`` → S3, an absolute path → that directory. The signing secret is
    ``$GENSERVE_SIGNING_SECRET``, else one generated into the state directory."""
    from genserve.secrets import load_secret
    from genserve.state import state_dir

    storage = LocalStorage(state_dir() / "files") if location is None else open_storage(location)
    return FileService(storage, load_secret("GENSERVE_SIGNING_SECRET", "signing_secret"),
                       ttl_s=ttl_s, upload_ttl_s=upload_ttl_s)


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

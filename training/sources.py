"""Fetching a personalization job's inputs (``images_data_url``, ``captions_file_url``) to a
local file, whatever kind of location the user gave.

Accepted: http(s) URLs (through `genserve.fetch.Fetcher`, so internal hosts stay refused),
``data:`` URIs, ``s3://bucket/key`` and absolute local paths (operator-run jobs only: an
HTTP user must not be able to name a file on the server). Every failure is an `InvalidInput`
naming the request field, and a failed fetch leaves nothing at ``dest``: the bytes go to a
temporary sibling that is renamed into place only once complete and within ``max_bytes``.

>>> fetch_to("s3://uploads/me.zip", Path("/tmp/job-1/images.zip"),
...          field="images_data_url", max_bytes=256 * 1024 * 1024)  # doctest: +SKIP
PosixPath('/tmp/job-1/images.zip')
"""

from __future__ import annotations

import dataclasses
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from genserve.errors import InvalidInput
from genserve.files.data_uri import decode_data_uri
from genserve.fetch import Fetcher
from genserve.storage import atomic_write, parse_s3_uri

_CHUNK = 1024 * 1024
_MiB = 1024 * 1024


def fetch_to(location: str, dest: Path, *, field: str, max_bytes: int,
             fetcher: Fetcher | None = None, allow_local: bool = True,
             s3_client: Any = None) -> Path:
    """Copy the file at ``location`` to ``dest`` (created or replaced) and return ``dest``.

    ``max_bytes`` caps the file, whatever its source; http(s) goes through ``fetcher`` (its
    SSRF checks, allow-list and time limit) with this cap. ``allow_local=False`` refuses local
    paths (for locations that came from an HTTP request). ``s3_client`` defaults to
    ``boto3.client("s3")``. Raises `InvalidInput` naming ``field`` on any failure.
    """
    dest = Path(dest)
    shown = _shown(location)
    # Schemes are case-insensitive (RFC 3986), and the request schema accepts "HTTPS://".
    scheme = location.partition(":")[0].lower() if ":" in location else ""
    if scheme == "s3":
        location = "s3" + location[2:]
    if scheme in ("http", "https"):
        # The fetcher's checks and time limit stay as they are; only the size is the field's.
        http = dataclasses.replace(fetcher or Fetcher(), max_bytes=max_bytes)
        body, _ = http.fetch(location, field)
        with atomic_write(dest) as out:
            out.write(body)
    elif scheme == "data":
        data, _ = decode_data_uri(location, field, max_bytes)
        with atomic_write(dest) as out:
            out.write(data)
    elif scheme == "s3":
        _fetch_s3(location, dest, field, max_bytes, s3_client)
    elif location.startswith("/"):
        if not allow_local:
            raise InvalidInput(f"`{field}`: local paths are not accepted here; give an "
                               "http(s) URL, a data: URI or an s3://bucket/key URI", field)
        _copy_local(location, dest, field, max_bytes)
    else:
        raise InvalidInput(f"`{field}`: {shown} is not a usable location; give an http(s) URL, "
                           "a data: URI, an s3://bucket/key URI or an absolute local path", field)
    return dest


def fetch_text(location: str, *, field: str, max_bytes: int, fetcher: Fetcher | None = None,
               allow_local: bool = True, s3_client: Any = None) -> str:
    """The UTF-8 text at ``location`` (a leading byte-order mark dropped), as `fetch_to`
    fetches it; invalid UTF-8 raises `InvalidInput` naming ``field``."""
    with tempfile.TemporaryDirectory(prefix="genserve-text-") as tmp:
        path = fetch_to(location, Path(tmp) / "text", field=field, max_bytes=max_bytes,
                        fetcher=fetcher, allow_local=allow_local, s3_client=s3_client)
        data = path.read_bytes()
    try:
        # utf-8-sig: Windows editors start files with a BOM, which json.loads would refuse.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"`{field}`: {_shown(location)} is not valid UTF-8 text (bad byte "
                           f"at offset {exc.start})", field) from None


# -- sources ---------------------------------------------------------------------------------

def _copy_local(location: str, dest: Path, field: str, max_bytes: int) -> None:
    shown = _shown(location)
    if "\x00" in location or ".." in PurePosixPath(location).parts:
        raise InvalidInput(f"`{field}`: local path {shown} must not contain NUL or '..'", field)
    try:
        # O_NONBLOCK: opening a FIFO would otherwise wait for a writer; fstat refuses it next.
        fd = os.open(location, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise InvalidInput(f"`{field}`: {shown} does not exist", field) from None
    except IsADirectoryError:
        raise InvalidInput(f"`{field}`: {shown} is a directory, not a file", field) from None
    except OSError as exc:
        raise InvalidInput(f"`{field}`: {shown} cannot be read ({exc.strerror})", field) from None
    try:  # checked on the open descriptor: the path could be swapped after a stat()
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise InvalidInput(f"`{field}`: {shown} is a directory, not a file", field)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(f"`{field}`: {shown} is not a regular file", field)
        _check_size(info.st_size, max_bytes, shown, field)
    except BaseException:
        os.close(fd)
        raise
    with open(fd, "rb") as src, atomic_write(dest) as out:
        # Counted again while copying: the file may grow after the fstat.
        _copy_capped(src.read, out, max_bytes, shown, field)


def _fetch_s3(location: str, dest: Path, field: str, max_bytes: int, client: Any) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    shown = _shown(location)
    try:
        bucket, key = parse_s3_uri(location)
    except ValueError as exc:
        raise InvalidInput(f"`{field}`: {exc}", field) from None
    if not key or key.endswith("/"):
        raise InvalidInput(f"`{field}`: {shown} names no object: give s3://bucket/key", field)
    if client is None:
        import boto3

        client = boto3.client("s3")
    try:
        answer = client.get_object(Bucket=bucket, Key=key)
        body = answer["Body"]
        try:
            _check_size(answer.get("ContentLength", 0), max_bytes, shown, field)
            with atomic_write(dest) as out:
                _copy_capped(body.read, out, max_bytes, shown, field)
        finally:
            body.close()
    except ClientError as exc:
        raise InvalidInput(f"`{field}`: {_s3_reason(shown, exc)}", field) from None
    except BotoCoreError as exc:
        # Unreachable endpoint, no credentials, a connection cut mid-stream.
        raise InvalidInput(f"`{field}`: could not read {shown} ({type(exc).__name__}: {exc})",
                           field) from None


def _s3_reason(shown: str, exc: Any) -> str:
    error = exc.response.get("Error", {})
    code = error.get("Code", "")
    if code in ("NoSuchKey", "404", "NotFound"):
        return f"{shown} does not exist"
    if code == "NoSuchBucket":
        return f"{shown}: the bucket does not exist"
    if code in ("AccessDenied", "403", "Forbidden"):
        return f"{shown}: access denied"
    return f"could not read {shown} ({code or 'error'}: {error.get('Message', exc)})"


# -- writing ---------------------------------------------------------------------------------

def _copy_capped(read: Callable[[int], bytes], out: BinaryIO, max_bytes: int, shown: str,
                 field: str) -> None:
    total = 0
    while chunk := read(_CHUNK):
        total += len(chunk)
        if total > max_bytes:
            raise InvalidInput(f"`{field}`: {shown} is larger than the "
                               f"{_human(max_bytes)} limit", field)
        out.write(chunk)


def _check_size(size: int, max_bytes: int, shown: str, field: str) -> None:
    if size > max_bytes:
        a, b = _human(size), _human(max_bytes)
        if a == b:  # rounding would hide the difference; show exact bytes
            a, b = f"{size} bytes", f"{max_bytes} bytes"
        raise InvalidInput(f"`{field}`: {shown} is {a}; the limit is {b}", field)


def _human(n: int) -> str:
    for unit, scale in (("GiB", 1024 * _MiB), ("MiB", _MiB), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f}".rstrip("0").rstrip(".") + f" {unit}"
    return f"{n} bytes"


def _shown(location: str) -> str:
    # data: URIs can be megabytes long; a message needs only their start.
    return location if len(location) <= 100 else location[:97] + "..."


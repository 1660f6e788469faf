"""Where job outputs go: a local directory or an S3 bucket, behind one small interface.

Jobs write their artifacts (LoRA weights, configs, previews) with ``put_file`` / ``put_bytes``
and hand the returned `File` to the user; a failed job removes what it wrote with
``delete_prefix``. Keys are relative POSIX paths (``"job-123/config.json"``) checked the same
way for both backends, so a key that works on a laptop works against S3 and cannot climb out
of the storage root.

>>> storage = open_storage("s3://genserve-artifacts/personalize")         # doctest: +SKIP
>>> out = storage.put_file("job-123/config.json", Path("/tmp/out/config.json"))  # doctest: +SKIP
>>> out.url, out.content_type                                             # doctest: +SKIP
('s3://genserve-artifacts/personalize/job-123/config.json', 'application/json')
"""

from __future__ import annotations

import mimetypes
import os
import secrets
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from genserve.schemas.common import File

OCTET_STREAM = "application/octet-stream"
# S3's own key limit (UTF-8 bytes); applied to local keys too so both backends agree.
MAX_KEY_BYTES = 1024
# S3 DeleteObjects takes at most this many keys per request.
_DELETE_BATCH = 1000

# The interpreter's built-in table only: `mimetypes.guess_type` also reads /etc/mime.types,
# which differs between hosts, and one key should get one type on every node.
_MIME = mimetypes.MimeTypes()
# Types our jobs write that the built-in table lacks (or gets wrong for a download).
_EXTRA_TYPES = {".safetensors": OCTET_STREAM, ".glb": "model/gltf-binary",
                ".yaml": "application/yaml", ".yml": "application/yaml"}
# `guess_type("a.tar.gz")` answers ("application/x-tar", "gzip"): the bytes are gzip.
_ENCODING_TYPES = {"gzip": "application/gzip", "bzip2": "application/x-bzip2",
                   "xz": "application/x-xz"}
# The way back, for types our pipelines write that the built-in table has no suffix for.
_EXTRA_EXTENSIONS = {"model/gltf-binary": ".glb", "audio/wav": ".wav", "audio/flac": ".flac",
                     "application/yaml": ".yaml", "application/gzip": ".gz"}
# SigV4, which presigned URLs must use on AWS (SigV2 is refused by most regions), caps a
# presigned URL's life at 7 days.
MAX_PRESIGN_TTL_S = 7 * 24 * 3600
# Types a browser may show inline: media that cannot run script. Everything else (HTML, SVG,
# XML, JavaScript) is offered as a download so it never renders on our origin.
_INLINE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif", "video/", "audio/",
                 "text/plain", "application/json", "application/pdf")


def guess_content_type(name: str) -> str:
    """MIME type for a file name; ``application/octet-stream`` when unknown.

    >>> guess_content_type("pytorch_lora_weights.safetensors")
    'application/octet-stream'
    """
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in _EXTRA_TYPES:
        return _EXTRA_TYPES[suffix]
    content_type, encoding = _MIME.guess_type(name, strict=False)
    if encoding:
        return _ENCODING_TYPES.get(encoding, OCTET_STREAM)
    return content_type or OCTET_STREAM


def guess_extension(content_type: str) -> str:
    """File suffix for a MIME type (``".png"``); ``""`` when unknown.

    >>> guess_extension("model/gltf-binary")
    '.glb'
    """
    content_type = content_type.partition(";")[0].strip().lower()
    if content_type in _EXTRA_EXTENSIONS:
        return _EXTRA_EXTENSIONS[content_type]
    if content_type == OCTET_STREAM:
        return ""  # ".bin" would rename a user's extension-less file for no gain
    return _MIME.guess_extension(content_type, strict=False) or ""


def content_disposition(file_name: str, content_type: str) -> str:
    """The ``Content-Disposition`` for a download: ``inline`` for media a browser can show
    safely, ``attachment`` otherwise; the name in both the ASCII and the RFC 5987 form.

    >>> print(content_disposition("a b.png", "image/png"))
    inline; filename="a_b.png"; filename*=UTF-8''a%20b.png
    """
    from urllib.parse import quote

    inline = content_type.lower().startswith(_INLINE_TYPES)
    ascii_name = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_"
                         for c in file_name) or "file"
    return (f'{"inline" if inline else "attachment"}; filename="{ascii_name}"; '
            f"filename*=UTF-8''{quote(file_name, safe='')}")


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative POSIX path, else raise ``ValueError``.

    Refused: empty keys or parts (``a//b``, trailing ``/``), ``.`` and ``..`` parts, absolute
    paths, backslashes (a Windows separator on some tools), NUL and over-long keys.
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"storage key must be a non-empty string but is {key!r}")
    if "\x00" in key or "\\" in key:
        raise ValueError(f"storage key {key!r} must not contain NUL or backslashes")
    if key.startswith("/"):
        raise ValueError(f"storage key {key!r} must be relative, not absolute")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"storage key {key!r} must not have empty, '.' or '..' parts")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"storage key {key!r} is not valid Unicode") from None
    if size > MAX_KEY_BYTES:
        raise ValueError(f"storage key is {size} bytes; the limit is {MAX_KEY_BYTES}")
    return key


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``"s3://bucket/some/key"`` → ``("bucket", "some/key")``; the key may be empty.

    Split by hand, not with ``urlsplit``: S3 keys may contain ``?`` and ``#``.
    """
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket or any(c in bucket for c in "@:?#\\\x00"):
        raise ValueError(f"s3 URI {uri!r} needs a plain bucket name: s3://bucket/key")
    return bucket, key


class Storage(ABC):
    """The interface jobs write outputs through. Keys are checked with `check_key`."""

    @abstractmethod
    def put_file(self, key: str, path: Path, content_type: str | None = None) -> File:
        """Store the file at ``path`` under ``key``; the type is guessed from ``key`` when
        None."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str) -> File:
        """Store ``data`` under ``key``."""

    @abstractmethod
    def get_file(self, key: str, dest: Path) -> Path:
        """Copy ``key`` to ``dest`` (complete or not at all); `FileNotFoundError` if absent."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The bytes stored under ``key``; `FileNotFoundError` if absent."""

    @abstractmethod
    def size(self, key: str) -> int:
        """The size in bytes of ``key``; `FileNotFoundError` if absent."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    @abstractmethod
    def url(self, key: str) -> str:
        """Where ``key`` is (or would be) stored, as returned in `File.url`."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete ``prefix`` and every key under ``prefix/``; return how many objects went.

        Whole path parts only: ``"job-1"`` never touches ``"job-12/..."``.
        """

    def _file(self, key: str, content_type: str | None, size: int) -> File:
        return File(url=self.url(key), content_type=content_type or guess_content_type(key),
                    file_name=PurePosixPath(key).name, file_size=size)


class LocalStorage(Storage):
    """Objects as files under ``root`` (a node-local disk or a shared mount)."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()

    def path(self, key: str) -> Path:
        """The file that holds ``key``; never outside ``root``, even through a symlink."""
        path = self.root / check_key(key)
        if not path.resolve().is_relative_to(self.root):
            raise ValueError(f"storage key {key!r} leads outside {self.root} (a symlink)")
        return path

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> File:
        target = self.path(key)
        with open(path, "rb") as src, atomic_write(target) as out:
            shutil.copyfileobj(src, out, 1024 * 1024)
            size = out.tell()
        return self._file(key, content_type, size)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> File:
        with atomic_write(self.path(key)) as out:
            out.write(data)
        return self._file(key, content_type, len(data))

    def get_file(self, key: str, dest: Path) -> Path:
        source = self.path(key)
        if not source.is_file():
            raise FileNotFoundError(f"{self.url(key)} does not exist")
        with open(source, "rb") as src, atomic_write(Path(dest)) as out:
            shutil.copyfileobj(src, out, 1024 * 1024)
        return Path(dest)

    def read_bytes(self, key: str) -> bytes:
        return self._existing(key).read_bytes()

    def size(self, key: str) -> int:
        return self._existing(key).stat().st_size

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def _existing(self, key: str) -> Path:
        path = self.path(key)
        if not path.is_file():  # a directory is a prefix of other keys, not an object
            raise FileNotFoundError(f"{self.url(key)} does not exist")
        return path

    def url(self, key: str) -> str:
        return (self.root / check_key(key)).as_uri()

    def delete_prefix(self, prefix: str) -> int:
        path = self.path(prefix.rstrip("/"))
        if path.is_file() or path.is_symlink():
            path.unlink()
            return 1
        if not path.is_dir():
            return 0
        count = sum(1 for p in path.rglob("*") if p.is_file() or p.is_symlink())
        shutil.rmtree(path)
        return count


class S3Storage(Storage):
    """Objects in ``bucket`` under ``prefix``. The default client is ``boto3.client("s3")``,
    which takes credentials, region and ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` (MinIO,
    a local test server) from the environment."""

    def __init__(self, bucket: str, prefix: str = "", *, client: Any = None):
        if not bucket or "/" in bucket:
            raise ValueError(f"`bucket` must be a bucket name but is {bucket!r}")
        prefix = prefix.strip("/")
        if prefix:
            check_key(prefix)
        if client is None:
            import boto3  # here, not at module level: importing genserve stays cheap

            from botocore.config import Config

            # s3v4 named explicitly: left unset, botocore presigns with SigV2 in the regions
            # that still take it, and SigV2 URLs stop working elsewhere.
            client = boto3.client("s3", config=Config(signature_version="s3v4"))
        self.bucket = bucket
        self.prefix = prefix
        self.client = client

    def object_key(self, key: str) -> str:
        """The full S3 key for ``key``: ``prefix/key``."""
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> File:
        content_type = content_type or guess_content_type(key)
        size = Path(path).stat().st_size
        # upload_file switches to multipart for large files (LoRA weights run to 100s of MB).
        self.client.upload_file(str(path), self.bucket, self.object_key(key),
                                ExtraArgs={"ContentType": content_type})
        return self._file(key, content_type, size)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> File:
        self.client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=data,
                               ContentType=content_type)
        return self._file(key, content_type, len(data))

    def get_file(self, key: str, dest: Path) -> Path:
        from botocore.exceptions import ClientError

        try:
            with atomic_write(Path(dest)) as out:
                self.client.download_fileobj(self.bucket, self.object_key(key), out)
        except ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(f"{self.url(key)} does not exist") from None
            raise
        return Path(dest)

    def read_bytes(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))["Body"]
        except ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(f"{self.url(key)} does not exist") from None
            raise
        with body:
            return body.read()

    def size(self, key: str) -> int:
        head = self._head(key)
        if head is None:
            raise FileNotFoundError(f"{self.url(key)} does not exist")
        return int(head["ContentLength"])

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def presigned_url(self, key: str, ttl_s: int, file_name: str | None = None,
                      content_type: str | None = None) -> str:
        """A GET URL for ``key`` that works without credentials for ``ttl_s`` seconds, on the
        client's endpoint (``AWS_ENDPOINT_URL`` for MinIO or a test server). S3 answers with
        ``content_type`` and a ``Content-Disposition`` naming ``file_name`` when given."""
        if not 1 <= ttl_s <= MAX_PRESIGN_TTL_S:
            raise ValueError(f"`ttl_s` must be 1 to {MAX_PRESIGN_TTL_S} s but is {ttl_s}")
        params = {"Bucket": self.bucket, "Key": self.object_key(key)}
        if file_name:
            params["ResponseContentDisposition"] = content_disposition(
                file_name, content_type or guess_content_type(file_name))
        if content_type:
            params["ResponseContentType"] = content_type
        return self.client.generate_presigned_url("get_object", Params=params,
                                                  ExpiresIn=int(ttl_s))

    def _head(self, key: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if _missing(exc):
                return None
            raise

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.object_key(key)}"

    def delete_prefix(self, prefix: str) -> int:
        base = self.object_key(prefix.rstrip("/"))
        keys = [base] if self.exists(prefix.rstrip("/")) else []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=base + "/")
        keys += [obj["Key"] for page in pages for obj in page.get("Contents", ())]
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = keys[start:start + _DELETE_BATCH]
            answer = self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise OSError(f"could not delete {len(answer['Errors'])} objects under "
                              f"{self.url(prefix)}, e.g. {first.get('Key')!r}: "
                              f"{first.get('Code')} {first.get('Message')}")
        return len(keys)


def open_storage(location: str) -> Storage:
    """``s3://bucket/prefix`` → `S3Storage`; an absolute local path → `LocalStorage`.

    >>> open_storage("/data/genserve/outputs").url("job-1/a.png")
    'file:///data/genserve/outputs/job-1/a.png'
    """
    if location.startswith("s3://"):
        bucket, prefix = parse_s3_uri(location)
        return S3Storage(bucket, prefix)
    if location.startswith("/"):
        if "\x00" in location or ".." in PurePosixPath(location).parts:
            raise ValueError(f"storage location {location!r} must not contain NUL or '..'")
        return LocalStorage(Path(location))
    raise ValueError(f"storage location {location!r} is not usable; give s3://bucket/prefix "
                     "or an absolute local path")


def _missing(exc: Any) -> bool:
    # HEAD answers a bare 404 (no body, so no "NoSuchKey" code); GET answers NoSuchKey.
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


@contextmanager
def atomic_write(dest: Path) -> Iterator[BinaryIO]:
    """Write to a temporary sibling of ``dest``, renamed over it only when the block ends
    without error: readers never see a half-written file, a failure leaves nothing.

    >>> with atomic_write(Path("/tmp/job-1/config.json")) as f:  # doctest: +SKIP
    ...     f.write(b"{}")
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{secrets.token_hex(6)}.partial"
    # Not mkstemp: its 0600 would carry over to the published file; 0644 minus the umask.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

"""The download URLs we hand out, and recognising them when they come back as inputs.

Local storage: ``{base_url}/files/{quoted key}?expires=<unix s>&signature=<hex>`` with
``signature = HMAC-SHA256(secret, f"{key}\\n{expires}")``. The signature is the whole
credential (the route needs no API key), so the host a URL names is never trusted: a URL is
ours when its signature checks out, whatever the host. ``expires`` is digits only, so the
message splits at its last newline one way only, and no two (key, expires) pairs sign alike.

S3: presigned GET URLs, signed by S3's own scheme. See `S3Urls` for how they are recognised.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import time
from urllib.parse import parse_qs, quote, unquote, urlsplit

from genserve.errors import GenserveError
from genserve.storage import S3Storage, check_key

_EXPIRES = re.compile(r"[0-9]{1,12}")  # unix seconds; 12 digits reach the year 33658
_ROUTE = "/files/"


class Forbidden(GenserveError):
    """A file URL whose signature is wrong or whose time is up (HTTP 403)."""

    status_code = 403


class LocalUrls:
    """Signs and checks ``/files/<key>`` URLs with ``secret``."""

    def __init__(self, secret: str):
        if not secret:
            raise ValueError("the URL signing secret must not be empty")
        self._secret = secret.encode("utf-8")

    def sign(self, key: str, expires: int) -> str:
        """The hex signature of (``key``, ``expires``)."""
        message = f"{key}\n{int(expires)}".encode("utf-8", "surrogatepass")
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def url(self, key: str, base_url: str, expires: int) -> str:
        return (f"{base_url.rstrip('/')}{_ROUTE}{quote(check_key(key))}"
                f"?expires={int(expires)}&signature={self.sign(key, expires)}")

    def check(self, key: str, expires: int | str, signature: str) -> int:
        """``expires`` as an int if the signature is ours (expired or not); `Forbidden`
        otherwise."""
        try:
            check_key(key)
        except ValueError as exc:
            raise Forbidden(f"not a file URL: {exc}") from None
        if not _EXPIRES.fullmatch(str(expires)):
            raise Forbidden(f"file URL has a malformed `expires` ({str(expires)[:20]!r})")
        expected = self.sign(key, int(expires)).encode()
        # Constant time: how much of a guess matched must not show in the response time.
        if not hmac.compare_digest(expected, str(signature).encode("utf-8", "replace")):
            raise Forbidden("file URL signature does not match; use the URL exactly as given")
        return int(expires)

    def parse(self, url: str) -> tuple[str, int] | None:
        """(key, expires) of a URL we signed, expired or not; None for any other URL.

        The base URL may carry a path (``https://host/api``), so every ``/files/`` in the
        path is tried as the route; only the right split can match the signature.
        """
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https"):
            return None
        query = parse_qs(parts.query)
        expires, signature = query.get("expires", []), query.get("signature", [])
        if len(expires) != 1 or len(signature) != 1:
            return None
        start = parts.path.find(_ROUTE)
        while start >= 0:
            key = unquote(parts.path[start + len(_ROUTE):])
            try:
                return key, self.check(key, expires[0], signature[0])
            except Forbidden:
                start = parts.path.find(_ROUTE, start + 1)
        return None


class S3Urls:
    """Recognises presigned GET URLs for ``storage``'s bucket and prefix.

    Only the URL's shape is checked (endpoint, bucket, prefix, presigning parameters, expiry),
    not S3's signature: checking it would mean re-deriving SigV4 with our credentials through
    botocore internals. Accepting the shape is safe enough because a recognised URL is only
    ever *read by our own workers* from our own bucket and prefix, which hold nothing but
    uploads (``uploads/<uuid4>/…``) and job outputs (``<request id>/…``): a key there is an
    unguessable capability that only ever reaches a user inside a URL we issued. A forged
    signature therefore gains nothing that knowing the key would not; an outside bucket or
    prefix is never matched and goes through the SSRF-checked fetcher as any other URL.
    The expiry is read from the URL so that an expired URL is refused the same way as a local
    one (honest clients get one behaviour; it is not a security check).
    """

    _PROBE = "genserve-probe"

    def __init__(self, storage: S3Storage):
        self.storage = storage
        self._layout: tuple[str, str, str] | None = None  # (scheme, netloc, path before key)

    def parse(self, url: str) -> tuple[str, float] | None:
        """(key, expiry as unix time) of a presigned URL into our bucket/prefix, else None."""
        scheme, netloc, base = self._our_layout()
        parts = urlsplit(url)
        if (parts.scheme.lower(), parts.netloc.lower()) != (scheme, netloc) or \
                not parts.path.startswith(base):
            return None
        object_key = unquote(parts.path[len(base):])
        prefix = f"{self.storage.prefix}/" if self.storage.prefix else ""
        if not object_key.startswith(prefix):
            return None
        expires = _presign_expiry(parse_qs(parts.query))
        try:
            key = check_key(object_key[len(prefix):])
        except ValueError:
            return None
        return (key, expires) if expires is not None else None

    def _our_layout(self) -> tuple[str, str, str]:
        # Where the client puts bucket and key depends on endpoint, region and addressing
        # style; rather than re-implement botocore's rules, presign a probe key (no request is
        # made) and read them off.
        if self._layout is None:
            parts = urlsplit(self.storage.presigned_url(self._PROBE, 60))
            probe = quote(self.storage.object_key(self._PROBE))
            if not parts.path.endswith(probe):
                raise RuntimeError(f"cannot tell where the key goes in {parts.path!r}")
            self._layout = (parts.scheme.lower(), parts.netloc.lower(),
                            parts.path[:-len(probe)])
        return self._layout


def _presign_expiry(query: dict[str, list[str]]) -> float | None:
    """Unix expiry of a SigV4 (``X-Amz-Date`` + ``X-Amz-Expires``) or SigV2 (``Expires``)
    presigned URL; None when the URL is not presigned."""
    def one(name: str) -> str | None:
        values = query.get(name, [])
        return values[0] if len(values) == 1 else None

    if one("X-Amz-Signature") and one("X-Amz-Date") and (one("X-Amz-Expires") or "").isdigit():
        try:
            signed = calendar.timegm(time.strptime(one("X-Amz-Date"), "%Y%m%dT%H%M%SZ"))
        except ValueError:
            return None
        return signed + int(one("X-Amz-Expires"))
    if one("Signature") and (one("Expires") or "").isdigit():
        return float(one("Expires"))
    return None

"""File names and content types that are safe to store, serve and put in HTTP headers.

Names come from users (``?file_name=`` on upload) and from model outputs; either way they end
up as the last part of a storage key and in a ``Content-Disposition`` header, so they are cut
down to a basename of ``[A-Za-z0-9._-]``. Content types end up in ``Content-Type``, so only a
bare ``type/subtype`` token is kept.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import PurePosixPath

from genserve.storage import content_disposition, guess_extension

# Long enough for any real name, short enough that the key stays far below S3's 1024 bytes.
MAX_NAME_CHARS = 128
# A suffix longer than this is part of the name, not an extension worth keeping whole.
_MAX_SUFFIX_CHARS = 16
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# RFC 6838 restricted-name: letters, digits and !#$&^_.+- ; no spaces, quotes or parameters.
_NAME = r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}"
_TOKEN = re.compile(rf"{_NAME}/{_NAME}")
# Top-level types that make a readable default name ("image.png"); others become "file.*".
_KINDS = ("image", "video", "audio", "model", "text")


def normalize_content_type(value: str | None) -> str | None:
    """``"Image/PNG; charset=x"`` → ``"image/png"``; None unless a valid ``type/subtype``.

    >>> normalize_content_type("text/html\\r\\nSet-Cookie: a=b") is None
    True
    """
    if not isinstance(value, str):
        return None
    token = value.partition(";")[0].strip().lower()
    return token if _TOKEN.fullmatch(token) else None


def sanitize_file_name(name: str | None, content_type: str | None = None,
                       default: str = "file") -> str:
    """A safe basename for ``name``: directories dropped (``/`` and ``\\``), unsafe characters
    replaced by ``_``, no leading dots, at most `MAX_NAME_CHARS`; ``default`` when nothing is
    left. A name without a suffix gets one from ``content_type``, so a locally stored file is
    served back with its type.

    >>> sanitize_file_name("../../etc/my photo (1).PNG")
    'my_photo_1_.PNG'
    >>> sanitize_file_name("été.wav"), sanitize_file_name("фото.png")
    ('ete.wav', '_.png')
    >>> sanitize_file_name(None, "video/mp4", default="video")
    'video.mp4'
    """
    base = re.split(r"[/\\]", name or "")[-1]
    # Accents dropped rather than replaced: "été.png" → "ete.png", not "_t_.png".
    base = "".join(c for c in unicodedata.normalize("NFKD", base) if not unicodedata.combining(c))
    base = _UNSAFE.sub("_", base).lstrip(".-")
    if not base.strip("._-"):
        base = default
    stem, suffix = _split_suffix(base)
    if not suffix and content_type:
        suffix = guess_extension(content_type)
    return stem[:MAX_NAME_CHARS - len(suffix)] + suffix


def output_name(file_name: object, content_type: str) -> str:
    """The stored name of an output file: its own ``file_name`` made safe, else one made from
    its type (``"image.png"``, ``"audio.wav"``, ``"file.zip"``)."""
    kind = content_type.partition("/")[0]
    return sanitize_file_name(file_name if isinstance(file_name, str) else None, content_type,
                              default=kind if kind in _KINDS else "file")


def download_headers(content_type: str, file_name: str) -> dict[str, str]:
    """Headers for serving a stored file from our own origin.

    ``nosniff`` stops a browser from reading an "image" as HTML, the sandbox CSP keeps any
    document that does render from running script or reaching our cookies, and
    `content_disposition` offers anything but plain media as a download.
    """
    return {"Content-Type": content_type,
            "Content-Disposition": content_disposition(file_name, content_type),
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "sandbox; default-src 'none'",
            # The URL is a credential; keep copies out of shared caches.
            "Cache-Control": "private, max-age=3600"}


def _split_suffix(name: str) -> tuple[str, str]:
    suffix = PurePosixPath(name).suffix
    if len(suffix) > _MAX_SUFFIX_CHARS or suffix == name:
        return name, ""
    return name[:-len(suffix)] if suffix else name, suffix

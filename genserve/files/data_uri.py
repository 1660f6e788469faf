"""``data:`` URIs (RFC 2397): how pipelines return files inline and how users may send them.

>>> decode_data_uri("data:text/plain;base64,aGk=", field="image_url", max_bytes=10)
(b'hi', 'text/plain')
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import unquote_to_bytes

from genserve.errors import InvalidInput
from genserve.files.names import normalize_content_type


def is_data_uri(value: object) -> bool:
    """Whether ``value`` is a string with the ``data:`` scheme (any case, as RFC 3986 allows)."""
    return isinstance(value, str) and value[:5].lower() == "data:"


def decode_data_uri(uri: str, field: str, max_bytes: int | None = None
                    ) -> tuple[bytes, str | None]:
    """(bytes, content type or None) of ``data:[<type>][;…][;base64],<payload>``.

    The size is judged from the text before decoding, so an oversized payload is never
    decoded whole. Raises `InvalidInput` naming ``field`` when malformed or over ``max_bytes``.
    """
    if not is_data_uri(uri):
        raise InvalidInput(f"`{field}`: not a data: URI", field)
    header, comma, payload = uri[5:].partition(",")
    if not comma:
        raise InvalidInput(f"`{field}`: data: URI has no ',' before its payload", field)
    is_base64 = header.lower().endswith(";base64")
    if max_bytes is not None:
        chars = len(payload) - 2 * payload.count("%")  # each %XX escape is one character
        padding = len(payload) - len(payload.rstrip("="))
        estimate = (chars - padding) * 3 // 4 if is_base64 else chars  # exact when valid
        _check_size(estimate, max_bytes, field)
    if is_base64:
        try:
            # '+' and '/' may arrive percent-escaped (RFC 2397 allows it).
            text = unquote_to_bytes(payload) if "%" in payload else payload.encode("ascii")
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise InvalidInput(f"`{field}`: data: URI payload is not valid base64 ({exc})",
                               field) from None
    else:
        data = unquote_to_bytes(payload)
    if max_bytes is not None:
        _check_size(len(data), max_bytes, field)
    return data, normalize_content_type(header.split(";", 1)[0])


def _check_size(size: int, max_bytes: int, field: str) -> None:
    if size > max_bytes:
        raise InvalidInput(f"`{field}`: the data: URI holds {size} bytes; the limit is "
                           f"{max_bytes} bytes", field)

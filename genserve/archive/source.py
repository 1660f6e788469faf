"""The archive's bytes: opening them, telling the format from the magic bytes, counting reads."""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

from genserve.archive.members import image_format_of, nested_archive
from genserve.errors import InvalidInput


def open_archive(archive: bytes | bytearray | memoryview | Path | str) -> BinaryIO:
    """A readable, seekable stream over in-memory bytes or a file path."""
    if isinstance(archive, (bytes, bytearray, memoryview)):
        return io.BytesIO(archive)
    return open(archive, "rb")


def detect_format(head: bytes, fld: str) -> str:
    """"zip", "tar" or "tar.gz" from the archive's first bytes; else `InvalidInput` naming
    what it looks like instead."""
    if not head:
        raise InvalidInput(f"`{fld}`: the archive is empty", fld)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    if head[257:262] == b"ustar":
        return "tar"
    kind = nested_archive(head, "") or (image_format_of(head[:16]) and "a single image")
    raise InvalidInput(f"`{fld}`: expected a zip, tar or tar.gz archive"
                       + (f" but got {kind}" if kind else " (unrecognised leading bytes)"), fld)


class CountingReader(io.RawIOBase):
    """The archive as a seekable stream that knows its size and counts the bytes handed out
    (for tar.gz: the compressed input consumed so far)."""

    def __init__(self, raw: BinaryIO):
        super().__init__()
        self._raw = raw
        self.size = raw.seek(0, io.SEEK_END)
        raw.seek(0)
        self.count = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.count += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def peek(self, size: int) -> bytes:
        pos = self._raw.tell()
        data = self._raw.read(size)
        self._raw.seek(pos)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

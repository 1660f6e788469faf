"""Tar and tar.gz archives, read as a forward-only stream with bounded header records and, for
gzip, a compression-ratio check while inflating."""

from __future__ import annotations

import gzip
import struct
import tarfile
import zlib
from typing import BinaryIO

from genserve.archive.members import ArchiveLimits, Extractor, MiB, is_bomb
from genserve.archive.source import CountingReader
from genserve.errors import InvalidInput

# Bytes a tar may spend between two members' data: the 512-byte header plus pax / GNU
# long-name records. tarfile reads such a record into memory in one piece, so a 1 GiB pax
# header (a few MB gzipped) would otherwise be a memory bomb.
_TAR_HEADER_BUDGET = 1 * MiB


def extract_tar(source: CountingReader, ex: Extractor, *, gzipped: bool) -> None:
    """Hand every acceptable regular-file member of the (gzipped) tar in ``source`` to ``ex``."""
    limits, fld = ex.limits, ex.field
    stream: BinaryIO = gzip.GzipFile(fileobj=source, mode="rb") if gzipped else source
    reader = _BudgetReader(stream, source if gzipped else None, limits, fld)
    try:
        # "r|": a forward-only stream; each member is read (or skipped) before the next.
        with tarfile.open(fileobj=reader, mode="r|") as tf:  # reads the first header
            while (member := tf.next()) is not None:
                ex.count_members(1)
                # tarfile skips the data of regular files and of unknown types.
                data = member.isreg() or member.type not in tarfile.SUPPORTED_TYPES
                size = member.size if data else 0
                ex.declare(size)  # before tarfile reads (or skips) the data
                reader.limit = member.offset_data + _tar_blocks(size) + _TAR_HEADER_BUDGET
                name = member.name
                if member.isdir():
                    continue
                if not member.isreg():
                    ex.skip(name, _tar_type_reason(member))
                elif size > limits.max_member_bytes:
                    ex.skip(name, f"{size} bytes; the limit is {limits.max_member_bytes}")
                else:
                    handle = tf.extractfile(member)
                    assert handle is not None  # regular file
                    with handle:
                        ex.take(name, handle.read)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, struct.error) as exc:
        raise InvalidInput(f"`{fld}`: the tar archive is corrupt or truncated ({exc})",
                           fld) from None


def _tar_blocks(size: int) -> int:
    return -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _tar_type_reason(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"symlink (to {member.linkname!r})"
    if member.islnk():
        return f"hard link (to {member.linkname!r})"
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "fifo"
    return "not a regular file"


class _BudgetReader:
    """The uncompressed tar stream, with a moving ``limit`` on how far tarfile may read (see
    `_TAR_HEADER_BUDGET`) and, for tar.gz, a ratio check against the compressed bytes used."""

    def __init__(self, stream: BinaryIO, compressed: CountingReader | None,
                 limits: ArchiveLimits, fld: str):
        self._stream = stream
        self._compressed = compressed
        self._limits = limits
        self._field = fld
        self.pos = 0
        self.limit = _TAR_HEADER_BUDGET

    def read(self, size: int = -1) -> bytes:
        room = self.limit - self.pos
        if size < 0 or size > room:
            size = room + 1  # one byte past the limit proves the overrun
        data = self._stream.read(size)
        self.pos += len(data)
        if self.pos > self.limit:
            raise InvalidInput(f"`{self._field}`: a tar header record exceeds "
                               f"{_TAR_HEADER_BUDGET} bytes (at offset {self.pos})", self._field)
        if self._compressed is not None and is_bomb(self.pos, self._compressed.count,
                                                    self._limits.max_ratio):
            raise InvalidInput(f"`{self._field}`: the gzip stream expanded from "
                               f"{self._compressed.count} to {self.pos} bytes; the limit is "
                               f"{self._limits.max_ratio:g}× (a likely decompression bomb)",
                               self._field)
        return data

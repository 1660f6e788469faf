"""Zip archives: the directory record, per-member ratios and overlaps are checked before any
member is read, because zipfile trusts them."""

from __future__ import annotations

import stat
import struct
import zipfile
import zlib

from genserve.archive.members import ArchiveLimits, Extractor, is_bomb
from genserve.archive.source import CountingReader
from genserve.errors import InvalidInput

# A zip's central directory costs zipfile memory per entry before we see any entry: refuse one
# larger than max_members entries could need (46-byte record + name + extra + comment).
_ZIP_DIRECTORY_BYTES_PER_MEMBER = 4096

_FILE_TYPES = {stat.S_IFLNK: "symlink", stat.S_IFDIR: "directory", stat.S_IFCHR: "device file",
               stat.S_IFBLK: "device file", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}


def extract_zip(source: CountingReader, ex: Extractor) -> None:
    """Hand every acceptable regular-file member of the zip in ``source`` to ``ex``."""
    limits, fld = ex.limits, ex.field
    _check_zip_directory(source, limits, fld)
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError, struct.error) as exc:
        raise InvalidInput(f"`{fld}`: not a readable zip archive ({exc})", fld) from None
    with zf:
        infos = zf.infolist()
        ex.count_members(len(infos))  # the directory record's count can lie; this cannot
        files = [i for i in infos if not i.is_dir()]
        ex.check_declared_total(sum(i.file_size for i in files))
        for info in files:  # refuse a bomb before writing a single file
            if is_bomb(info.file_size, info.compress_size, limits.max_ratio):
                raise InvalidInput(
                    f"`{fld}`: member {info.filename!r} claims to expand from "
                    f"{info.compress_size} to {info.file_size} bytes "
                    f"({info.file_size / max(info.compress_size, 1):.0f}×); the limit is "
                    f"{limits.max_ratio:g}× (a likely zip bomb)", fld)
        _check_zip_overlaps(infos, source.size, fld)
        for info in files:
            name = info.filename
            ftype = stat.S_IFMT(info.external_attr >> 16)  # Unix mode, when the zip has one
            if ftype and ftype != stat.S_IFREG:
                ex.skip(name, _FILE_TYPES.get(ftype, "not a regular file"))
            elif info.flag_bits & 0x1:
                ex.skip(name, "encrypted")
            elif info.file_size > limits.max_member_bytes:
                ex.skip(name, f"{info.file_size} bytes; the limit is {limits.max_member_bytes}")
            else:
                try:
                    with zf.open(info) as member:
                        ex.take(name, member.read)
                except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError,
                        RuntimeError) as exc:
                    # Bad CRC (the header understated the size: zipfile stops there), data
                    # shorter than the header claims, unknown compression method: this member
                    # is unusable, the rest may be fine.
                    ex.skip(name, f"corrupt or unsupported member ({type(exc).__name__}: {exc})")


def _check_zip_overlaps(infos: list[zipfile.ZipInfo], size: int, fld: str) -> None:
    """Headers can lie, but only so far: zipfile never produces more than a member's declared
    ``file_size`` (checked against the limits above), and the declared ``compress_size`` bytes
    must really be in the file (checked here; a "stored" claim cannot hide a small deflated
    payload). What remains is members sharing one
    compressed payload (the "overlapping files" zip bomb): each entry looks modest, together
    they expand without bound. Every member's local header (≥ 30 bytes) plus data must end
    before the next one starts."""
    spans = sorted((i.header_offset, i.header_offset + 30 + i.compress_size, i.filename)
                   for i in infos)
    for (_, end, name), (start, _, following) in zip(spans, [*spans[1:], (size, 0, "")],
                                                 strict=True):
        if end > start:
            raise InvalidInput(f"`{fld}`: member {name!r} overlaps "
                               + (f"member {following!r}" if following else "the end of the file")
                               + f" (ends at byte {end}, the next starts at {start}); refusing "
                               "a malformed zip or an overlapping-members zip bomb", fld)


def _check_zip_directory(source: CountingReader, limits: ArchiveLimits, fld: str) -> None:
    """Read the end-of-central-directory record ourselves: zipfile parses every entry into
    memory before we could count them."""
    size = source.size
    tail_len = min(size, 22 + 0xFFFF)  # fixed record + the longest comment
    source.seek(size - tail_len)
    tail = source.read(tail_len)
    source.seek(0)
    pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or len(tail) < pos + 22:
        return  # zipfile will refuse it with its own message
    entries, directory_bytes = struct.unpack("<HI", tail[pos + 10:pos + 16])
    zip64_at = size - tail_len + pos - 20 - 56  # zip64 record + locator precede the EOCD
    if (entries == 0xFFFF or directory_bytes == 0xFFFFFFFF) and zip64_at >= 0:
        source.seek(zip64_at)
        record = source.read(56)
        source.seek(0)
        if record[:4] == b"PK\x06\x06":
            entries, directory_bytes = struct.unpack("<QQ", record[32:48])
    if entries > limits.max_members:
        raise InvalidInput(f"`{fld}`: the archive has {entries} members; the limit is "
                           f"{limits.max_members}", fld)
    budget = limits.max_members * _ZIP_DIRECTORY_BYTES_PER_MEMBER
    if directory_bytes > budget:
        raise InvalidInput(f"`{fld}`: the zip directory is {directory_bytes} bytes, more than "
                           f"{limits.max_members} members need ({budget}); refusing it", fld)

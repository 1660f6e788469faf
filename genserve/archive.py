"""Extracting a user's training archive (zip, tar, tar.gz) without trusting it.

An uploaded archive can name ``../../etc/cron.d/x`` or ``/abs/path``, carry symlinks, devices
or nested archives, lie in its headers, or expand a few kilobytes into terabytes. So:

- output is *flat*: each kept file is written under its base name (collisions get ``-1``,
  ``-2``… in archive order) straight into one directory; members with absolute, ``..``,
  drive-letter or backslash paths are refused outright rather than "fixed";
- only regular files are read: symlinks, hard links, devices, fifos, encrypted and nested
  archives are skipped with a reason in the report;
- counts and sizes are checked from the headers before anything is written (member count,
  total and per-member size, compression ratio), then again on the bytes actually produced,
  because headers can lie: zipfile stops at a member's declared size (a longer member fails
  its CRC and is skipped), overlapping zip members are refused, a tar.gz stream is
  ratio-checked as it inflates and tar header records are bounded;
- images must decode fully (`genserve.images.decode_image_bytes`: PNG/JPEG/WebP, pixel limit),
  so a truncated or disguised file never reaches training;
- everything is written into a temporary sibling of ``target`` and renamed into place only on
  success: a refused archive leaves nothing behind.

>>> report = extract_images(Path("photos.zip"), Path("/data/job-1/images"))  # doctest: +SKIP
>>> [p.name for p in report.images], report.captions_file, report.skipped  # doctest: +SKIP
(['me1.jpg', 'me2.jpg'], PosixPath('/data/job-1/images/metadata.jsonl'), [('notes.txt', ...)])
"""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import stat
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from genserve.errors import InvalidInput
from genserve.images import ALLOWED_FORMATS, MAX_IMAGE_PIXELS, ImageDecodeError, decode_image_bytes

MiB = 1024 * 1024
FORMATS = ("zip", "tar", "tar.gz")
CAPTIONS_NAME = "metadata.jsonl"  # Hugging Face imagefolder's name; preferred over other .jsonl

_CHUNK = 1 * MiB
_SNIFF_BYTES = 512  # enough for every magic below, tar's "ustar" at offset 257 included
# Tiny members compress "too well" legitimately (a 64 KiB run of zeros is 200 bytes); below
# this a high ratio is harmless because the total-size cap still holds.
_RATIO_FLOOR_BYTES = 1 * MiB
# Bytes a tar may spend between two members' data: the 512-byte header plus pax / GNU
# long-name records. tarfile reads such a record into memory in one piece, so a 1 GiB pax
# header (a few MB gzipped) would otherwise be a memory bomb.
_TAR_HEADER_BUDGET = 1 * MiB
# A zip's central directory costs zipfile memory per entry before we see any entry: refuse one
# larger than max_members entries could need (46-byte record + name + extra + comment).
_ZIP_DIRECTORY_BYTES_PER_MEMBER = 4096

_IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"))
_OTHER_IMAGE_MAGIC = ((b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"BM", "BMP"),
                      (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"\x00\x00\x01\x00", "ICO"))
_ARCHIVE_MAGIC = ((b"PK\x03\x04", "zip"), (b"PK\x05\x06", "zip"), (b"\x1f\x8b", "gzip"),
                  (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"7z\xbc\xaf\x27\x1c", "7z"),
                  (b"Rar!\x1a\x07", "rar"), (b"\x28\xb5\x2f\xfd", "zstd"))
_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".gz", ".tbz", ".tbz2", ".bz2", ".txz", ".xz",
                     ".7z", ".rar", ".zst")
_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_NAME_BYTES = 200  # leaves room for a "-123" de-duplication suffix under NAME_MAX (255)


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds on one archive. The defaults fit a personalization upload (tens of photos)."""

    max_members: int = 1000               # entries of any kind, directories included
    max_total_bytes: int = 512 * MiB      # uncompressed, all regular files together
    max_member_bytes: int = 64 * MiB      # larger files are skipped, never read
    max_ratio: float = 200.0              # photos barely compress; deflate bombs reach ~1000×
    max_pixels: int = MAX_IMAGE_PIXELS    # per image, checked before it is decoded


@dataclass
class ExtractReport:
    """What `extract_images` kept and what it skipped.

    ``sources`` maps each written file's name to its member name in the archive
    (``"me-1.jpg" → "trip/me.jpg"``), so a captions file that names archive paths can be
    matched to the flat output.
    """

    images: list[Path]
    captions_file: Path | None
    skipped: list[tuple[str, str]]  # (member name, reason)
    sources: dict[str, str] = field(default_factory=dict)


def extract_images(archive: bytes | Path, target: Path, *, fmt: str | None = None,
                   limits: ArchiveLimits = ArchiveLimits(),
                   field: str = "images_data_url") -> ExtractReport:
    """Extract the usable images (and a captions ``.jsonl``) of ``archive`` into ``target``.

    ``fmt`` forces "zip", "tar" or "tar.gz"; by default the format is read from the magic
    bytes. ``target`` must not exist or be an empty directory; it is created only when the
    archive is accepted. Raises `InvalidInput` naming ``field`` for a corrupt or unsupported
    archive, too many members, too many bytes, a compression bomb, or no usable image.
    """
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"`fmt` must be one of {FORMATS} or None but is {fmt!r}")
    target = Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"extraction target {target} exists and is not an empty directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    # A sibling of target: same filesystem, so the final rename is atomic.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", suffix=".partial",
                                    dir=target.parent))
    try:
        with _open(archive) as raw:
            source = _CountingReader(raw)
            fmt = fmt or _detect_format(source.peek(_SNIFF_BYTES), field)
            extractor = _Extractor(staging, limits, field)
            if fmt == "zip":
                _extract_zip(source, extractor)
            else:
                _extract_tar(source, extractor, gzipped=fmt == "tar.gz")
        if not extractor.images:
            reasons = "; ".join(f"{name}: {why}" for name, why in extractor.skipped[:5])
            raise InvalidInput(f"`{field}`: the archive has no usable image (PNG, JPEG or WebP)"
                               + (f"; skipped {len(extractor.skipped)} members, e.g. {reasons}"
                                  if reasons else ""), field)
        os.replace(staging, target)  # rename(2): replaces an empty directory, else fails
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExtractReport(
        images=[target / name for name in extractor.images],
        captions_file=target / extractor.captions if extractor.captions else None,
        skipped=extractor.skipped, sources=extractor.sources)


# -- containers -----------------------------------------------------------------------------

def _extract_zip(source: _CountingReader, ex: _Extractor) -> None:
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
            if _bomb(info.file_size, info.compress_size, limits.max_ratio):
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


def _check_zip_directory(source: _CountingReader, limits: ArchiveLimits, fld: str) -> None:
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


def _extract_tar(source: _CountingReader, ex: _Extractor, *, gzipped: bool) -> None:
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


_FILE_TYPES = {stat.S_IFLNK: "symlink", stat.S_IFDIR: "directory", stat.S_IFCHR: "device file",
               stat.S_IFBLK: "device file", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}


# -- members ----------------------------------------------------------------------------------

class _Extractor:
    """Decides, member by member, what to keep; writes kept files into ``staging``."""

    def __init__(self, staging: Path, limits: ArchiveLimits, field: str):
        self.staging = staging.resolve()
        self.limits = limits
        self.field = field
        self.images: list[str] = []
        self.captions: str | None = None
        self.skipped: list[tuple[str, str]] = []
        self.sources: dict[str, str] = {}
        self._taken: set[str] = set()
        self._members = 0
        self._declared = 0
        self._read = 0

    def skip(self, name: str, reason: str) -> None:
        self.skipped.append((name, reason))

    def count_members(self, n: int) -> None:
        self._members += n
        if self._members > self.limits.max_members:
            raise InvalidInput(f"`{self.field}`: the archive has more than "
                               f"{self.limits.max_members} members (counted "
                               f"{self._members}); the limit is {self.limits.max_members}",
                               self.field)

    def check_declared_total(self, total: int) -> None:
        if total > self.limits.max_total_bytes:
            raise InvalidInput(f"`{self.field}`: the archive expands to {total} bytes; the limit "
                               f"is {self.limits.max_total_bytes}", self.field)

    def declare(self, size: int) -> None:
        self._declared += size
        self.check_declared_total(self._declared)

    def take(self, name: str, read: Callable[[int], bytes]) -> None:
        """Classify one regular-file member from its name and first bytes; keep it if it is an
        image that decodes or the captions file."""
        base, reason = _flat_name(name)
        if base is None:
            return self.skip(name, reason)
        data = bytearray()
        self._pull(read, _SNIFF_BYTES, data, name)
        nested = _nested_archive(bytes(data), base)
        if nested:
            return self.skip(name, f"nested archive ({nested})")
        is_captions = base.lower().endswith(".jsonl")
        image_format = _image_format(bytes(data[:16]))
        if not is_captions and image_format not in ALLOWED_FORMATS:
            return self.skip(name, f"image format {image_format} is not allowed; use one of "
                                   f"{', '.join(ALLOWED_FORMATS)}" if image_format
                             else "not an image")
        while self._pull(read, _CHUNK, data, name):
            pass
        if is_captions:
            return self._keep_captions(name, base, data)
        try:
            decode_image_bytes(data, max_pixels=self.limits.max_pixels)
        except ImageDecodeError as exc:
            return self.skip(name, str(exc))
        except Exception as exc:  # noqa: BLE001 - any decoder failure means "unusable image"
            return self.skip(name, f"not a decodable image ({type(exc).__name__}: {exc})")
        self.images.append(self._write(name, base, data))

    def _pull(self, read: Callable[[int], bytes], n: int, into: bytearray, name: str) -> int:
        chunk = read(n)
        into += chunk
        self._read += len(chunk)
        # Headers were checked already; these catch a container that produces more than it
        # declared (defence in depth: zipfile and tarfile both stop at the declared size).
        if len(into) > self.limits.max_member_bytes:
            raise InvalidInput(f"`{self.field}`: member {name!r} produced more than "
                               f"{self.limits.max_member_bytes} bytes", self.field)
        if self._read > self.limits.max_total_bytes:
            raise InvalidInput(f"`{self.field}`: the archive produced more than "
                               f"{self.limits.max_total_bytes} bytes", self.field)
        return len(chunk)

    def _keep_captions(self, name: str, base: str, data: bytearray) -> None:
        current = self.captions
        preferred = base.lower() == CAPTIONS_NAME
        if current is not None:
            if not preferred or current.lower() == CAPTIONS_NAME:
                return self.skip(name, f"a captions file was already taken "
                                       f"({self.sources[current]!r})")
            (self.staging / current).unlink()
            self._taken.discard(current.casefold())
            self.skip(self.sources.pop(current), f"{name!r} is preferred as captions file")
        self.captions = self._write(name, base, data)

    def _write(self, name: str, base: str, data: bytearray) -> str:
        out = self._unique(base)
        path = self.staging / out
        if path.resolve().parent != self.staging:  # cannot happen for a flat name; be sure
            raise RuntimeError(f"refusing to write {path} outside {self.staging}")
        # O_EXCL | O_NOFOLLOW: never through a pre-existing file or link.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                     0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        self.sources[out] = name
        return out

    def _unique(self, base: str) -> str:
        """``a.png``, then ``a-1.png``, ``a-2.png``…; case-insensitive so the result is the
        same on macOS and Windows filesystems."""
        stem, suffix = os.path.splitext(base)
        candidate, n = base, 0
        while candidate.casefold() in self._taken:
            n += 1
            candidate = f"{stem}-{n}{suffix}"
        self._taken.add(candidate.casefold())
        return candidate


def _flat_name(name: str) -> tuple[str | None, str]:
    """The member's base name, or None and why the path is refused."""
    if _CONTROL.search(name):
        return None, "unsafe path (control characters)"
    unified = name.replace("\\", "/")  # zip members from Windows tools use backslashes
    if unified.startswith("/"):
        return None, "unsafe path (absolute)"
    if _DRIVE.match(unified):
        return None, "unsafe path (drive letter)"
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if ".." in parts:
        return None, "unsafe path ('..')"
    if not parts:
        return None, "empty name"
    base = parts[-1]
    if "__MACOSX" in parts or base.startswith("._"):
        return None, "macOS metadata"
    try:
        encoded = base.encode("utf-8")
    except UnicodeEncodeError:
        return None, "file name is not valid UTF-8"
    if len(encoded) > _MAX_NAME_BYTES:
        return None, f"file name longer than {_MAX_NAME_BYTES} bytes"
    return base, ""


def _image_format(head: bytes) -> str | None:
    for magic, fmt in _IMAGE_MAGIC + _OTHER_IMAGE_MAGIC:
        if head.startswith(magic):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"avif"):
        return "HEIF/AVIF"
    return None


def _nested_archive(head: bytes, base: str) -> str | None:
    for magic, kind in _ARCHIVE_MAGIC:
        if head.startswith(magic):
            return kind
    if head[257:262] == b"ustar":
        return "tar"
    suffix = os.path.splitext(base.lower())[1]
    return suffix[1:] if suffix in _ARCHIVE_SUFFIXES else None


def _bomb(produced: int, compressed: int, max_ratio: float) -> bool:
    return produced > _RATIO_FLOOR_BYTES and produced > max_ratio * max(compressed, 1)


# -- sources ----------------------------------------------------------------------------------

def _open(archive: bytes | bytearray | memoryview | Path | str) -> BinaryIO:
    if isinstance(archive, (bytes, bytearray, memoryview)):
        return io.BytesIO(archive)
    return open(archive, "rb")


def _detect_format(head: bytes, fld: str) -> str:
    if not head:
        raise InvalidInput(f"`{fld}`: the archive is empty", fld)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    if head[257:262] == b"ustar":
        return "tar"
    kind = _nested_archive(head, "") or (_image_format(head[:16]) and "a single image")
    raise InvalidInput(f"`{fld}`: expected a zip, tar or tar.gz archive"
                       + (f" but got {kind}" if kind else " (unrecognised leading bytes)"), fld)


class _CountingReader(io.RawIOBase):
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


class _BudgetReader:
    """The uncompressed tar stream, with a moving ``limit`` on how far tarfile may read (see
    `_TAR_HEADER_BUDGET`) and, for tar.gz, a ratio check against the compressed bytes used."""

    def __init__(self, stream: BinaryIO, compressed: _CountingReader | None,
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
        if self._compressed is not None and _bomb(self.pos, self._compressed.count,
                                                  self._limits.max_ratio):
            raise InvalidInput(f"`{self._field}`: the gzip stream expanded from "
                               f"{self._compressed.count} to {self.pos} bytes; the limit is "
                               f"{self._limits.max_ratio:g}× (a likely decompression bomb)",
                               self._field)
        return data

"""Member by member: which archive entries to keep, under what flat name, and the bounds.

Both container readers (`zip`, `tar`) hand each regular-file member to one `Extractor`, which
sniffs its first bytes, refuses unsafe names and nested archives, decodes images fully and
writes what it keeps into the staging directory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from genserve.errors import InvalidInput
from genserve.images import ALLOWED_FORMATS, MAX_IMAGE_PIXELS, ImageDecodeError, decode_image_bytes

MiB = 1024 * 1024
CAPTIONS_NAME = "metadata.jsonl"  # Hugging Face imagefolder's name; preferred over other .jsonl

SNIFF_BYTES = 512  # enough for every magic below, tar's "ustar" at offset 257 included
_CHUNK = 1 * MiB
# Tiny members compress "too well" legitimately (a 64 KiB run of zeros is 200 bytes); below
# this a high ratio is harmless because the total-size cap still holds.
_RATIO_FLOOR_BYTES = 1 * MiB

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


class Extractor:
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
        self._pull(read, SNIFF_BYTES, data, name)
        nested = nested_archive(bytes(data), base)
        if nested:
            return self.skip(name, f"nested archive ({nested})")
        is_captions = base.lower().endswith(".jsonl")
        image_format = image_format_of(bytes(data[:16]))
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


def image_format_of(head: bytes) -> str | None:
    """The image format named by ``head``'s magic bytes (allowed or not), else None."""
    for magic, fmt in _IMAGE_MAGIC + _OTHER_IMAGE_MAGIC:
        if head.startswith(magic):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"avif"):
        return "HEIF/AVIF"
    return None


def nested_archive(head: bytes, base: str) -> str | None:
    """The archive kind ``head`` (or, failing that, the name ``base``) shows, else None."""
    for magic, kind in _ARCHIVE_MAGIC:
        if head.startswith(magic):
            return kind
    if head[257:262] == b"ustar":
        return "tar"
    suffix = os.path.splitext(base.lower())[1]
    return suffix[1:] if suffix in _ARCHIVE_SUFFIXES else None


def is_bomb(produced: int, compressed: int, max_ratio: float) -> bool:
    """True when ``produced`` bytes from ``compressed`` exceed the ratio (above a floor)."""
    return produced > _RATIO_FLOOR_BYTES and produced > max_ratio * max(compressed, 1)

"""The entry point: `extract_images` stages a user's archive next to ``target`` and renames it
into place only when it is accepted."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from genserve.archive.members import SNIFF_BYTES, ArchiveLimits, Extractor
from genserve.archive.source import CountingReader, detect_format, open_archive
from genserve.archive.tar import extract_tar
from genserve.archive.zip import extract_zip
from genserve.errors import InvalidInput

FORMATS = ("zip", "tar", "tar.gz")
_DEFAULT_LIMITS = ArchiveLimits()  # frozen, so one shared default instance is safe


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
                   limits: ArchiveLimits = _DEFAULT_LIMITS,
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
        with open_archive(archive) as raw:
            source = CountingReader(raw)
            fmt = fmt or detect_format(source.peek(SNIFF_BYTES), field)
            extractor = Extractor(staging, limits, field)
            if fmt == "zip":
                extract_zip(source, extractor)
            else:
                extract_tar(source, extractor, gzipped=fmt == "tar.gz")
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

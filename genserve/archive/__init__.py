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

Modules: `extract` (the entry point), `members` (per-member decisions and limits),
`zip` and `tar` (the containers), `source` (format detection, counted reads).
"""

from genserve.archive.extract import FORMATS, ExtractReport, extract_images
from genserve.archive.members import CAPTIONS_NAME, ArchiveLimits

__all__ = ["CAPTIONS_NAME", "FORMATS", "ArchiveLimits", "ExtractReport", "extract_images"]

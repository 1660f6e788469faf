"""Training-archive extraction (RELIABILITY B5/B6): traversal, links, bombs, counts, nesting,
encryption and bad images are refused or skipped; nothing is written outside the target and a
refused archive leaves nothing behind. Every fixture is built here, in memory."""

from __future__ import annotations

import io
import stat
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genserve.archive import ArchiveLimits, extract_images
from genserve.errors import InvalidInput

FIELD = "images_data_url"


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (16, 12), seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


PNG, JPEG, WEBP, GIF = (image_bytes(f, seed=i) for i, f in enumerate(("PNG", "JPEG", "WEBP",
                                                                      "GIF")))
CAPTIONS = b'{"file_name": "photos/a.png", "text": "a photo of TOK"}\n'


def make_zip(members: list[tuple[str, bytes]], *, deflate: bool = True) -> bytes:
    buf = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members:
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return buf.getvalue()


def make_tar(members: list[tarfile.TarInfo | tuple[str, bytes]], *, gz: bool = True,
             fmt: int = tarfile.GNU_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w", format=fmt) as tf:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tf.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tf.addfile(info, io.BytesIO(member[1]))
    return buf.getvalue()


def tar_special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def zip_patch_central(data: bytes, name: str, **fields: int) -> bytes:
    """Rewrite fields of ``name``'s central-directory record (what zipfile trusts)."""
    offsets = {"flag_bits": (8, "<H"), "compress_size": (20, "<I"), "file_size": (24, "<I")}
    out = bytearray(data)
    pos = out.find(b"PK\x01\x02")
    while pos >= 0:
        name_len = struct.unpack_from("<H", out, pos + 28)[0]
        if out[pos + 46:pos + 46 + name_len] == name.encode():
            for key, value in fields.items():
                offset, fmt = offsets[key]
                struct.pack_into(fmt, out, pos + offset, value)
            return bytes(out)
        pos = out.find(b"PK\x01\x02", pos + 46)
    raise AssertionError(f"{name} not in the central directory")


@pytest.fixture
def where(tmp_path: Path) -> tuple[Path, Path]:
    """(parent, target): the parent must end up holding target and nothing else."""
    parent = tmp_path / "job"
    parent.mkdir()
    return parent, parent / "images"


def listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def reasons(report) -> dict[str, str]:
    return dict(report.skipped)


def test_zip_happy_path(where):
    parent, target = where
    archive = make_zip([("photos/", b""), ("photos/a.png", PNG), ("photos/b.jpg", JPEG),
                        ("c.webp", WEBP), ("photos/metadata.jsonl", CAPTIONS),
                        ("notes.txt", b"hello"), ("anim.gif", GIF)])
    report = extract_images(archive, target)
    assert [p.name for p in report.images] == ["a.png", "b.jpg", "c.webp"]
    assert all(p.parent == target and p.is_file() for p in report.images)
    assert (target / "a.png").read_bytes() == PNG  # the original bytes, EXIF kept
    assert report.captions_file == target / "metadata.jsonl"
    assert report.captions_file.read_bytes() == CAPTIONS
    assert report.sources["a.png"] == "photos/a.png"
    why = reasons(report)
    assert why["notes.txt"] == "not an image"
    assert "GIF is not allowed" in why["anim.gif"]
    assert listing(parent) == ["images"]  # no staging directory left behind
    assert listing(target) == ["a.png", "b.jpg", "c.webp", "metadata.jsonl"]


def test_tar_gz_happy_path_and_plain_tar(where, tmp_path):
    parent, target = where
    members = [tar_special("photos", tarfile.DIRTYPE), ("photos/a.png", PNG),
               ("photos/b.jpg", JPEG), ("captions.jsonl", CAPTIONS), ("readme.md", b"# hi")]
    report = extract_images(make_tar(members), target)
    assert [p.name for p in report.images] == ["a.png", "b.jpg"]
    assert report.captions_file == target / "captions.jsonl"
    assert reasons(report) == {"readme.md": "not an image"}
    assert listing(parent) == ["images"]
    # Plain tar, given as a path on disk.
    path = tmp_path / "plain.tar"
    path.write_bytes(make_tar(members, gz=False))
    again = extract_images(path, tmp_path / "plain")
    assert [p.name for p in again.images] == ["a.png", "b.jpg"]


def test_metadata_jsonl_is_preferred_over_other_jsonl(where):
    _, target = where
    report = extract_images(make_zip([("a.png", PNG), ("other.jsonl", b"{}\n"),
                                      ("metadata.jsonl", CAPTIONS), ("more.jsonl", b"{}\n")]),
                            target)
    assert report.captions_file == target / "metadata.jsonl"
    assert listing(target) == ["a.png", "metadata.jsonl"]
    why = reasons(report)
    assert "preferred" in why["other.jsonl"] and "already taken" in why["more.jsonl"]


EVIL = ["../evil.png", "..\\evil.png", "a/../../evil2.png", "C:\\evil.png", "C:evil.png",
        "\\\\server\\share\\evil.png", "ok/./../../../evil3.png"]


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_traversal_and_absolute_members_write_nothing_outside(where, tmp_path, kind):
    parent, target = where
    outside = tmp_path / "outside"
    outside.mkdir()
    absolute = str(outside / "abs.png")
    members = [(name, PNG) for name in [*EVIL, "/abs.png", absolute]] + [("ok.png", JPEG)]
    archive = make_zip(members) if kind == "zip" else make_tar(members)
    report = extract_images(archive, target)
    assert listing(target) == ["ok.png"]
    assert listing(parent) == ["images"]
    assert listing(outside) == []
    assert sorted(listing(tmp_path)) == ["job", "outside"]
    why = reasons(report)
    for name in EVIL + ["/abs.png", absolute]:
        # tarfile keeps names verbatim; zipfile too on POSIX (backslashes included).
        assert why[name].startswith("unsafe path"), (name, why)


def test_tar_links_devices_and_fifos_are_skipped(where, tmp_path):
    parent, target = where
    outside = tmp_path / "outside"
    outside.mkdir()
    members = [
        tar_special("link.png", tarfile.SYMTYPE, "/etc/passwd"),
        tar_special("escape", tarfile.SYMTYPE, str(outside)),
        ("escape/evil.png", PNG),  # the classic: write through the link just extracted
        tar_special("hard.png", tarfile.LNKTYPE, "escape/evil.png"),
        tar_special("tty", tarfile.CHRTYPE),
        tar_special("disk", tarfile.BLKTYPE),
        tar_special("pipe", tarfile.FIFOTYPE),
    ]
    report = extract_images(make_tar(members), target)
    why = reasons(report)
    assert why["link.png"].startswith("symlink") and why["escape"].startswith("symlink")
    assert why["hard.png"].startswith("hard link")
    assert why["tty"] == why["disk"] == "device file" and why["pipe"] == "fifo"
    assert listing(outside) == []
    assert listing(target) == ["evil.png"]  # flattened into the target, not through the link
    assert not any(p.is_symlink() for p in target.iterdir())
    assert listing(parent) == ["images"]


def test_zip_symlink_member_is_skipped(where):
    _, target = where
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        link = zipfile.ZipInfo("link.png")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
        zf.writestr("ok.png", PNG)
    report = extract_images(buf.getvalue(), target)
    assert reasons(report) == {"link.png": "symlink"}
    assert listing(target) == ["ok.png"]


def assert_refused(where, archive: bytes, *phrases: str, **limits) -> InvalidInput:
    parent, target = where
    with pytest.raises(InvalidInput) as info:
        extract_images(archive, target, limits=ArchiveLimits(**limits))
    assert info.value.field == FIELD
    for phrase in phrases:
        assert phrase in info.value.message, info.value.message
    assert listing(parent) == []  # neither target nor a staging directory
    return info.value


ZEROS = bytes(8 * 1024 * 1024)


def test_zip_bomb_refused_from_headers(where):
    archive = make_zip([("a.png", PNG), ("zeros.png", ZEROS)])
    assert len(archive) < 20_000
    err = assert_refused(where, archive, "zeros.png", str(len(ZEROS)), "limit is 200×")
    assert "zip bomb" in err.message


def zip_duplicate_central(data: bytes, copies: int) -> bytes:
    """Repeat a one-member zip's central-directory record: every copy points at the same
    compressed payload (the "overlapping files" zip bomb, in its simplest form)."""
    start = data.find(b"PK\x01\x02")
    end = data.find(b"PK\x05\x06")
    record = data[start:end]
    eocd = bytearray(data[end:])
    struct.pack_into("<HHI", eocd, 8, copies, copies, len(record) * copies)
    return data[:start] + record * copies + bytes(eocd)


def test_zip_overlapping_members_refused(where):
    # 50 entries, one payload: each header is honest about its own sizes (ratio 1).
    archive = zip_duplicate_central(make_zip([("a.png", image_bytes(size=(64, 64)))]), 50)
    assert len(zipfile.ZipFile(io.BytesIO(archive)).infolist()) == 50
    assert_refused(where, archive, "overlaps", "overlapping-members zip bomb")


def test_zip_header_claiming_more_data_than_the_file_holds_refused(where):
    # A bomb disguised as "stored": the header claims 8 MiB of compressed data (ratio 1:1,
    # passes the ratio check) but the file holds a few KB of deflate.
    archive = make_zip([("a.png", PNG), ("zeros.png", PNG[:8] + ZEROS)])
    archive = zip_patch_central(archive, "zeros.png", compress_size=len(ZEROS) + 8)
    assert_refused(where, archive, "'zeros.png' overlaps the end of the file")


def test_zip_member_larger_than_its_header_says_is_skipped(where):
    _, target = where
    big = image_bytes(size=(64, 64), seed=3)
    archive = zip_patch_central(make_zip([("a.png", PNG), ("lie.png", big)], deflate=False),
                                "lie.png", file_size=100, compress_size=100)
    report = extract_images(archive, target)
    assert "corrupt" in reasons(report)["lie.png"]  # zipfile stops at 100 bytes: bad CRC
    assert listing(target) == ["a.png"]


def test_tar_gz_bomb_refused(where):
    assert_refused(where, make_tar([("a.png", PNG), ("zeros.bin", ZEROS)]),
                   "decompression bomb", "limit is 200×")


def test_tar_pax_header_bomb_refused(where):
    # tarfile reads a pax record into memory in one piece; 2 MiB here stands for gigabytes.
    info = tarfile.TarInfo("a.png")
    info.size = len(PNG)
    info.pax_headers = {"comment": "x" * (2 * 1024 * 1024)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(info, io.BytesIO(PNG))
    assert_refused(where, buf.getvalue(), "header record exceeds")


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_too_many_members_refused(where, kind):
    members = [(f"{i}.png", PNG) for i in range(30)]
    archive = make_zip(members) if kind == "zip" else make_tar(members)
    assert_refused(where, archive, "members", "limit is 20", max_members=20)


def test_zip_count_checked_before_parsing_the_directory(where):
    members = [(f"{i:05d}.txt", b"") for i in range(3000)]
    assert_refused(where, make_zip(members), "3000 members", "limit is 1000")


def test_zip_oversized_central_directory_refused(where):
    # Two members, but 5000-byte names: more directory than two members could need.
    members = [("a" * 5000 + ".png", PNG), ("b" * 5000 + ".png", PNG)]
    assert_refused(where, make_zip(members), "zip directory is", max_members=2)


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_total_size_refused(where, kind):
    members = [(f"{i}.png", image_bytes(seed=i)) for i in range(5)]
    total = sum(len(m[1]) for m in members)
    archive = make_zip(members) if kind == "zip" else make_tar(members)
    assert_refused(where, archive, "bytes", f"limit is {total - 1}", max_total_bytes=total - 1)


def test_member_over_size_limit_skipped(where):
    _, target = where
    big = image_bytes(size=(64, 64), seed=5)
    report = extract_images(make_zip([("a.png", PNG), ("big.png", big)]), target,
                            limits=ArchiveLimits(max_member_bytes=len(big) - 1))
    assert reasons(report)["big.png"] == f"{len(big)} bytes; the limit is {len(big) - 1}"


def test_nested_archives_skipped(where):
    _, target = where
    inner_zip = make_zip([("x.png", PNG)])
    inner_tgz = make_tar([("y.png", PNG)])
    report = extract_images(make_zip([("a.png", PNG), ("more.zip", inner_zip),
                                      ("more.tgz", inner_tgz), ("disguised.png", inner_zip)]),
                            target)
    why = reasons(report)
    assert why["more.zip"] == "nested archive (zip)"
    assert why["more.tgz"] == "nested archive (gzip)"
    assert why["disguised.png"] == "nested archive (zip)"
    assert listing(target) == ["a.png"]


def test_encrypted_zip_member_skipped(where):
    # zipfile cannot write encrypted members; set the "encrypted" flag bit (0x1) instead.
    _, target = where
    archive = zip_patch_central(make_zip([("a.png", PNG), ("secret.png", JPEG)]),
                                "secret.png", flag_bits=0x1)
    report = extract_images(archive, target)
    assert reasons(report) == {"secret.png": "encrypted"}
    assert listing(target) == ["a.png"]


def test_bad_images_skipped_with_reasons(where):
    _, target = where
    big = image_bytes(size=(40, 40), seed=7)
    report = extract_images(make_zip([("a.png", PNG), ("half.png", PNG[:len(PNG) // 2]),
                                      ("fake.jpg", b"\xff\xd8\xff" + b"garbage" * 10),
                                      ("big.png", big), ("._a.png", PNG),
                                      ("__MACOSX/photos/x.png", PNG)]),
                            target, limits=ArchiveLimits(max_pixels=1000))
    why = reasons(report)
    assert "truncated" in why["half.png"]
    assert "not a decodable image" in why["fake.jpg"]
    assert "40×40 = 1600 pixels; the limit is 1000" in why["big.png"]
    assert why["._a.png"] == why["__MACOSX/photos/x.png"] == "macOS metadata"
    assert listing(target) == ["a.png"]


def test_zero_usable_images_refused(where):
    err = assert_refused(where, make_zip([("notes.txt", b"hi"), ("half.png", PNG[:40])]),
                         "no usable image", "notes.txt: not an image")
    assert "half.png" in err.message


def test_duplicate_base_names_deduplicated_deterministically(where, tmp_path):
    _, target = where
    members = [("a/x.png", PNG), ("b/x.png", JPEG), ("c/X.png", WEBP), ("x-1.png", PNG)]
    report = extract_images(make_zip(members), target)
    names = [p.name for p in report.images]
    assert names == ["x.png", "x-1.png", "X-2.png", "x-1-1.png"]
    assert report.sources == {"x.png": "a/x.png", "x-1.png": "b/x.png", "X-2.png": "c/X.png",
                              "x-1-1.png": "x-1.png"}
    assert (target / "x-1.png").read_bytes() == JPEG
    again = extract_images(make_tar(members), tmp_path / "again")
    assert [p.name for p in again.images] == names


def test_format_detection_and_forcing(where, tmp_path):
    parent, target = where
    with pytest.raises(InvalidInput, match="expected a zip, tar or tar.gz archive"):
        extract_images(b"just text, not an archive", target)
    with pytest.raises(InvalidInput, match="but got a single image"):
        extract_images(PNG, target)
    with pytest.raises(InvalidInput, match="the archive is empty"):
        extract_images(b"", target)
    with pytest.raises(InvalidInput, match="corrupt or truncated"):
        extract_images(make_zip([("a.png", PNG)]), target, fmt="tar")
    with pytest.raises(InvalidInput, match="corrupt or truncated"):
        extract_images(make_tar([("a.png", PNG)])[:-200], target)  # truncated gzip
    assert listing(parent) == []
    report = extract_images(make_tar([("a.png", PNG)], gz=False), target, fmt="tar")
    assert [p.name for p in report.images] == ["a.png"]
    with pytest.raises(ValueError, match="`fmt`"):
        extract_images(PNG, tmp_path / "x", fmt="rar")


def test_target_must_be_new_or_empty(where):
    parent, target = where
    target.mkdir()
    report = extract_images(make_zip([("a.png", PNG)]), target)  # empty directory: fine
    assert listing(target) == ["a.png"]
    with pytest.raises(FileExistsError):
        extract_images(make_zip([("b.png", PNG)]), target)
    assert listing(target) == ["a.png"] and listing(parent) == ["images"]
    assert report.images == [target / "a.png"]

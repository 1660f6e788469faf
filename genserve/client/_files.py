"""Files in and out: what to upload, `data:` URIs, where each output file of a result goes."""

from __future__ import annotations

import base64
import mimetypes
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, unquote_to_bytes, urlsplit

# Types our endpoints produce that `mimetypes` may not know (it varies by OS tables).
EXTENSIONS = {
    "image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "audio/wav": ".wav",
    "audio/x-wav": ".wav", "video/mp4": ".mp4", "model/gltf-binary": ".glb",
    "model/obj": ".obj", "application/ply": ".ply", "model/ply": ".ply",
    "application/json": ".json", "application/zip": ".zip",
    "application/octet-stream": ".bin",
}
UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def extension_for(content_type: str | None) -> str:
    if not content_type:
        return ".bin"
    base = content_type.split(";")[0].strip().lower()
    return EXTENSIONS.get(base) or mimetypes.guess_extension(base) or ".bin"


def content_type_for(file_name: str | None) -> str:
    guessed = mimetypes.guess_type(file_name or "")[0]
    return guessed or "application/octet-stream"


def decode_data_uri(uri: str) -> tuple[bytes, str]:
    """``data:[<type>][;base64],<payload>`` → (bytes, content type)."""
    if not uri.startswith("data:") or "," not in uri:
        raise ValueError(f"not a data: URI: {uri[:40]!r}")
    head, payload = uri[5:].split(",", 1)
    params = head.split(";")
    content_type = params[0] or "text/plain"
    if "base64" in params[1:]:
        return base64.b64decode(unquote(payload), validate=False), content_type
    return unquote_to_bytes(payload), content_type


def safe_name(name: str) -> str:
    """A server-suggested name reduced to one harmless path component."""
    name = UNSAFE.sub("_", Path(name.replace("\\", "/")).name).lstrip(".")
    return name[:128] or "file"


@dataclass(frozen=True)
class OutputFile:
    """One ``{"url": …}`` object found in a result: ``where`` is its JSON path."""

    where: str
    obj: dict[str, Any]

    @property
    def url(self) -> str:
        return self.obj["url"]

    def suggested_name(self) -> str:
        if self.obj.get("file_name"):
            return safe_name(str(self.obj["file_name"]))
        ext = extension_for(self.obj.get("content_type"))
        if not self.url.startswith("data:"):
            base = Path(unquote(urlsplit(self.url).path)).name
            if base:
                return safe_name(base if Path(base).suffix else base + ext)
        else:
            ext = extension_for(self.obj.get("content_type") or self.url[5:].split(";")[0])
        return safe_name(self.where.replace(".", "-") or "file") + ext


def output_files(output: Any, where: str = "") -> list[OutputFile]:
    """Every File/Image object (a dict with a string ``url`` that is a data: or http(s) URL) in
    a result, depth first, in document order."""
    found: list[OutputFile] = []
    if isinstance(output, dict):
        url = output.get("url")
        if isinstance(url, str) and url.startswith(("data:", "http://", "https://", "/")):
            found.append(OutputFile(where, output))
            return found
        for key, value in output.items():
            found += output_files(value, f"{where}.{key}" if where else str(key))
    elif isinstance(output, list):
        for i, value in enumerate(output):
            found += output_files(value, f"{where}.{i}" if where else str(i))
    return found


def unique_path(directory: Path, name: str, taken: set[Path]) -> Path:
    """``name`` in ``directory``, numbered (``x-1.png``) if this call already wrote one."""
    path, stem, suffix, n = directory / name, Path(name).stem, Path(name).suffix, 0
    while path in taken:
        n += 1
        path = directory / f"{stem}-{n}{suffix}"
    taken.add(path)
    return path


def open_upload(source: str | Path | bytes, file_name: str | None
                ) -> tuple[BinaryIO | bytes, str | None]:
    """What to send and the file name to announce. A path is streamed from disk."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), file_name
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"no such file to upload: {path}")
    return path.open("rb"), file_name or path.name


def zip_directory(directory: Path) -> Path:
    """``directory``'s files as a zip in a temporary folder (the caller deletes its parent)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise NotADirectoryError(f"not a directory: {directory}")
    tmp = Path(tempfile.mkdtemp(prefix="genserve-"))
    base = tmp / (safe_name(directory.resolve().name) or "images")
    return Path(shutil.make_archive(str(base), "zip", root_dir=directory))


def elide_data_uris(output: Any, keep: int = 48) -> Any:
    """A copy of ``output`` with long ``data:`` URIs shortened, for printing."""
    if isinstance(output, dict):
        return {k: elide_data_uris(v, keep) for k, v in output.items()}
    if isinstance(output, list):
        return [elide_data_uris(v, keep) for v in output]
    if isinstance(output, str) and output.startswith("data:") and len(output) > keep:
        return f"{output[:keep]}…({len(output)} chars)"
    return output


def dest_path(dest: str | Path, name: str | None, url: str, content_type: str | None) -> Path:
    """Where `download` writes: ``dest`` itself, or a name inside it when ``dest`` is a
    directory (existing, or spelt with a trailing slash)."""
    path = Path(dest)
    if path.is_dir() or str(dest).endswith(("/", os.sep)):
        hint = {"url": url, "file_name": name, "content_type": content_type}
        path = path / OutputFile("file", hint).suggested_name()
    path.parent.mkdir(parents=True, exist_ok=True)
    return path

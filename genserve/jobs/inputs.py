"""User-supplied input URLs, resolved the same way everywhere: a file uploaded here (its signed
URL) is read from storage, a `data:` URI is decoded, and anything else goes through the
SSRF-checked fetcher."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class FileFetcher:
    """Drop-in for `genserve.fetch.Fetcher` where a route fetches a user URL."""

    files: Any     # genserve.files.FileService
    fetcher: Any   # genserve.fetch.Fetcher

    def fetch(self, url: str, field_name: str = "url") -> tuple[bytes, str | None]:
        return self.files.materialize(url, field_name, self.fetcher)

    def check(self, url: str, field_name: str = "url"):
        return self.fetcher.check(url, field_name)

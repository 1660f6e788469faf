"""Walking a job's JSON output for its files (every dict with a ``"url"``).

A stored output holds *references*, ``genserve-file:<key>``, never URLs: a signed URL expires,
so it is made fresh each time the output is read (`FileService.resolve`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

REFERENCE = "genserve-file:"


def reference(key: str) -> str:
    """``genserve-file:<key>``: how a stored output points at a file in storage."""
    return REFERENCE + key


def referenced_key(url: object) -> str | None:
    """The key in a ``genserve-file:`` reference; None for anything else."""
    if isinstance(url, str) and url.startswith(REFERENCE):
        return url[len(REFERENCE):]
    return None


def map_files(value: Any, change: Callable[[dict, str], str | None], path: str = "$") -> Any:
    """A copy of ``value`` (JSON-like: dicts, lists, scalars) in which each dict with a string
    ``"url"`` has it replaced by ``change(the dict, its JSON path)`` unless that returns None.

    Dicts are visited in key order and lists in order, depth first, so the order of calls
    is the same for the same output, run after run. ``value`` itself is never modified.
    """
    if isinstance(value, dict):
        # The dict's own file first, then its fields': numbering follows reading order.
        new = change(value, path) if isinstance(value.get("url"), str) else None
        out = {k: map_files(v, change, f"{path}.{k}") for k, v in value.items()}
        if new is not None:
            out["url"] = new
        return out
    if isinstance(value, (list, tuple)):
        return [map_files(v, change, f"{path}[{i}]") for i, v in enumerate(value)]
    return value

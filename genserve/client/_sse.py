"""A small incremental Server-Sent Events parser (the WHATWG ``text/event-stream`` rules).

Network chunks split anywhere, even inside a UTF-8 character or between the ``\\r`` and ``\\n``
of a line break, so the decoder keeps what it has not finished and emits whole events only.
No dependency: the format is a few lines, and the client then needs nothing beyond httpx.

>>> d = SSEDecoder()
>>> d.feed(b'data: {"status": "IN_QU')
[]
>>> d.feed(b'EUE"}\\n\\n')
[SSEEvent(data='{"status": "IN_QUEUE"}', event='message', id=None, retry=None)]
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass


@dataclass(frozen=True)
class SSEEvent:
    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    def __init__(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""          # the unfinished last line
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None
        self._first = True          # a leading BOM is dropped once

    def feed(self, chunk: bytes | str) -> list[SSEEvent]:
        """The events completed by ``chunk``."""
        text = self._text.decode(chunk) if isinstance(chunk, bytes) else chunk
        if self._first and text:
            text = text.removeprefix("\ufeff")
            self._first = False
        buf = self._pending + text
        events: list[SSEEvent] = []
        start = 0
        while True:
            cr, lf = buf.find("\r", start), buf.find("\n", start)
            if cr == -1 and lf == -1:
                break
            if cr != -1 and (lf == -1 or cr < lf):
                if cr == len(buf) - 1:
                    break  # a "\r" at the end may be the first half of "\r\n": wait
                end, nxt = cr, cr + 2 if buf[cr + 1] == "\n" else cr + 1
            else:
                end, nxt = lf, lf + 1
            event = self._line(buf[start:end])
            if event is not None:
                events.append(event)
            start = nxt
        self._pending = buf[start:]
        return events

    def flush(self) -> list[SSEEvent]:
        """At the end of the stream. A ``\r`` held back as a possible ``\r\n`` was a line
        break after all; an event not closed by a blank line is dropped (the spec's rule)."""
        tail = self._pending + self._text.decode(b"", final=True)
        self._pending = ""
        if tail.endswith("\r"):
            event = self._line(tail[:-1])
            return [event] if event is not None else []
        if tail:
            self._line(tail)
        return []

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # comment / keep-alive
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry":
            if value.isdigit():
                self._retry = int(value)
        return None

    def _dispatch(self) -> SSEEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return SSEEvent(data="\n".join(data), event=event or "message", id=self._id,
                        retry=self._retry)

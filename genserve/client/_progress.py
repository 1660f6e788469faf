"""A job's progress on a terminal: queue position, one bar per stage, other log lines.

Pipelines log progress as ``"base: step 3/20"``, ``"refiner: step 2/5"`` and training as
``"step 10/400 loss 0.1234"``; `parse_progress` reads those, `Progress` draws them (tqdm, a
dependency of transformers / huggingface_hub, so always installed with genserve).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any, TextIO

from genserve.client._common import Completed, Queued, Status

STEP = re.compile(r"^\s*(?:(?P<stage>[^:]{1,40}):\s*)?step\s+(?P<done>\d+)\s*/\s*(?P<total>\d+)"
                  r"(?P<rest>.*)$", re.IGNORECASE)


@dataclass(frozen=True)
class StepProgress:
    stage: str | None
    done: int
    total: int
    rest: str = ""


def parse_progress(message: str) -> StepProgress | None:
    """``"refiner: step 2/5"`` → StepProgress("refiner", 2, 5); ``"step 10/400 loss 0.12"`` →
    StepProgress(None, 10, 400, "loss 0.12"); anything else → None.

    >>> parse_progress("base: step 3/20")
    StepProgress(stage='base', done=3, total=20, rest='')
    """
    m = STEP.match(message)
    if m is None or int(m["total"]) <= 0:
        return None
    stage = m["stage"].strip() if m["stage"] else None
    return StepProgress(stage, int(m["done"]), int(m["total"]), m["rest"].strip(" ,;"))


class Progress:
    """Callable as ``on_update``: draws each new status on ``stream`` (stderr)."""

    def __init__(self, stream: TextIO | None = None, enabled: bool = True):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self._seen: set[tuple[Any, str]] = set()
        self._bar: Any = None
        self._bar_key: tuple[str | None, int] | None = None
        self._position: int | None = None
        self._started = False

    def __call__(self, status: Status) -> None:
        if not self.enabled:
            return
        if isinstance(status, Queued):
            if status.position != self._position:
                self._position = status.position
                self._say(f"queued (position {status.position})")
            return
        if not self._started:
            self._started = True
            self._say("running")
        for log in status.logs or []:  # type: ignore[attr-defined]
            # The server may resend earlier lines (cumulative logs, a reopened stream).
            key = (log.timestamp, log.message)
            if key in self._seen:
                continue
            self._seen.add(key)
            step = parse_progress(log.message)
            if step is not None:
                self._step(step)
            elif log.message.strip():
                self._say(log.message if log.level == "INFO" else f"{log.level}: {log.message}")
        if isinstance(status, Completed):
            self.close()
            if status.error:
                self._say(f"failed: {status.error}")
            elif "inference_time" in status.metrics:
                self._say(f"done in {float(status.metrics['inference_time']):.2f}s")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar, self._bar_key = None, None

    def _step(self, step: StepProgress) -> None:
        key = (step.stage, step.total)
        if key != self._bar_key:
            self.close()
            self._bar = _make_bar(step, self.stream)
            self._bar_key = key
        if self._bar is None:
            self.stream.write(f"{step.stage + ': ' if step.stage else ''}step "
                              f"{step.done}/{step.total} {step.rest}".rstrip() + "\n")
            return
        self._bar.n = min(step.done, step.total)
        if step.rest:
            self._bar.set_postfix_str(step.rest, refresh=False)
        self._bar.refresh()

    def _say(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()


def _make_bar(step: StepProgress, stream: TextIO) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # plain lines instead
        return None
    return tqdm(total=step.total, desc=step.stage or "step", unit="step", file=stream,
                leave=True, dynamic_ncols=True, mininterval=0)


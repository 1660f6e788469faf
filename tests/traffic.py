"""Background HTTP traffic for the fault and load cases: client threads sending one request
after another (or at a fixed rate), optionally retrying the way our client does (connection
errors, 502/503/504, with backoff), recording every outcome."""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass

import httpx

from tests.conftest import API_KEY
from tests.util import tiny_request

RETRYABLE = (502, 503, 504)


@dataclass
class Outcome:
    started: float      # monotonic
    latency_s: float    # of the final attempt
    status: int | str   # HTTP status, or the exception's name
    attempts: int


class Traffic:
    def __init__(self, url: str, *, clients: int = 1, retry: bool = True,
                 body: dict | None = None, path: str = "/generate",
                 rate_per_s: float | None = None, attempts: int = 90):
        self.url, self.path, self.retry, self.attempts = url, path, retry, attempts
        self.body = body or tiny_request(num_inference_steps=2)
        # rate_per_s: open-loop arrivals shared by all clients (None: back to back).
        self.interval = clients / rate_per_s if rate_per_s else 0.0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.outcomes: list[Outcome] = []
        self.failures: list[tuple[float, str]] = []  # every failed attempt: (when, reason)
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(clients)]

    # Figures ------------------------------------------------------------------------------
    @property
    def sent(self) -> int:
        return len(self.outcomes)

    @property
    def ok(self) -> int:
        return sum(o.status == 200 for o in self.outcomes)

    @property
    def gave_up(self) -> int:
        return sum(o.status != 200 for o in self.outcomes)

    @property
    def first_try_failed(self) -> int:
        return sum(o.attempts > 1 or o.status != 200 for o in self.outcomes)

    def statuses(self) -> dict:
        counts: dict = {}
        for o in self.outcomes:
            counts[o.status] = counts.get(o.status, 0) + 1
        return counts

    def latency(self, q: float, since: float = 0.0) -> float:
        values = sorted(o.latency_s for o in self.outcomes if o.started >= since)
        return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")

    def median(self) -> float:
        return statistics.median(o.latency_s for o in self.outcomes)

    # Running ------------------------------------------------------------------------------
    def _run(self, index: int) -> None:
        with httpx.Client(base_url=self.url, timeout=60,
                          headers={"Authorization": f"Key {API_KEY}"}) as client:
            # Paced clients start a share of the interval apart: arrivals evenly spaced, not
            # all clients' requests landing together as bursts.
            next_at = time.monotonic() + index * self.interval / len(self.threads)
            while not self.stop.is_set():
                if self.interval:
                    delay = next_at - time.monotonic()
                    if delay > 0 and self.stop.wait(delay):
                        return
                    next_at += self.interval
                outcome = self.one(client)
                with self.lock:
                    self.outcomes.append(outcome)

    def one(self, client: httpx.Client) -> Outcome:
        started = time.monotonic()
        for attempt in range(1, self.attempts + 1):
            t0 = time.monotonic()
            try:
                status: int | str = client.post(self.path, json=self.body).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            if status == 200:
                return Outcome(started, time.monotonic() - t0, status, attempt)
            with self.lock:
                self.failures.append((time.monotonic(), str(status)))
            if not self.retry or (isinstance(status, int) and status not in RETRYABLE):
                return Outcome(started, time.monotonic() - t0, status, attempt)
            time.sleep(min(0.1 * 2 ** (attempt - 1), 1.0))
        return Outcome(started, time.monotonic() - t0, status, self.attempts)

    def __enter__(self) -> "Traffic":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(90)

    def wait_served(self, after: int, timeout_s: float = 120) -> float:
        """Seconds until more than ``after`` requests have been served."""
        started = time.monotonic()
        while self.ok <= after:
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"no request served {timeout_s}s after the fault")
            time.sleep(0.05)
        return time.monotonic() - started

"""Signed webhook delivery: Standard Webhooks signatures (published and independent vectors),
fal's payload, the retry schedule, and delivery end to end against loopback receivers this test
starts, with internal targets refused before any connection (the interpreter's audit hook
records every socket connect, and listeners on the refused ports must have nothing queued)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import http.server
import json
import random
import socket
import sys
import threading
import time

import pytest

from genserve.fetch import RESPONSE_PREFIX_BYTES, Fetcher, Unresolvable, resolve
from genserve.webhooks import (
    MAX_ATTEMPTS,
    Delivery,
    WebhookVerificationError,
    as_whsec,
    backoff,
    deliver,
    next_delay,
    payload,
    secret_key,
    sign,
    signed_headers,
    verify,
    webhook_secret,
)

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
FAST = {"base_s": 0.001, "cap_s": 0.01}  # the production schedule, shrunk to milliseconds


# --- signatures --------------------------------------------------------------------------

def test_sign_matches_an_independent_hmac():
    body = b'{"request_id":"r1","status":"OK"}'
    mac = hmac.new(b"0123456789abcdef0123456789abcdef", b"msg_1.1700000000." + body,
                   hashlib.sha256).digest()
    assert sign(SECRET, "msg_1", 1700000000, body) == "v1," + base64.b64encode(mac).decode()


def test_sign_matches_the_standard_webhooks_published_vector():
    assert sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330, b'{"test": 2432232314}') == \
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signed_headers_shape_and_verify_round_trip():
    body = payload("r1", output={"seed": 7})
    headers = signed_headers(SECRET, "r1", body, now=1700000000.9)
    assert headers == {"webhook-id": "r1", "webhook-timestamp": "1700000000",
                       "webhook-signature": sign(SECRET, "r1", 1700000000, body),
                       "content-type": "application/json", "user-agent": "genserve-webhooks"}
    verify(SECRET, headers, body, now=1700000000)
    # Header names in any case (frameworks differ), body as text.
    verify(SECRET, {k.title(): v for k, v in headers.items()}, body.decode(), now=1700000001)


def _rejected(secret, headers, body, now=1700000000, match=None):
    with pytest.raises(WebhookVerificationError, match=match):
        verify(secret, headers, body, now=now)


def test_verify_rejects_forgeries_and_stale_deliveries():
    body = payload("r1", output={"seed": 7})
    headers = signed_headers(SECRET, "r1", body, now=1700000000)
    _rejected(SECRET, headers, body.replace(b"7", b"8"), match="no `v1` signature")
    _rejected(as_whsec("another secret"), headers, body, match="no `v1` signature")
    _rejected(SECRET, {**headers, "webhook-id": "r2"}, body, match="no `v1` signature")
    _rejected(SECRET, headers, body, now=1700000000 + 301, match="old")
    _rejected(SECRET, headers, body, now=1700000000 - 301, match="future")
    # A replay with a fresh timestamp but the old signature fails: the timestamp is signed.
    _rejected(SECRET, {**headers, "webhook-timestamp": "1700000300"}, body, now=1700000300)
    _rejected(SECRET, {k: v for k, v in headers.items() if k != "webhook-signature"}, body,
              match="missing header")
    _rejected(SECRET, {**headers, "webhook-timestamp": "soon"}, body, match="not an integer")
    _rejected(SECRET, {**headers, "webhook-signature": "v1a," + headers["webhook-signature"][3:]},
              body, match="no `v1` signature")  # another scheme's signature is not ours
    _rejected(SECRET, {**headers, "webhook-signature": "v1,ünïcode"}, body)


def test_verify_accepts_any_of_several_signatures():
    """During a key rotation a sender signs with both keys; one match is enough."""
    body = b"{}"
    headers = signed_headers(SECRET, "m", body, now=1700000000)
    other = sign("an old secret", "m", 1700000000, body)
    headers["webhook-signature"] = f"{other} {headers['webhook-signature']}"
    verify(SECRET, headers, body, now=1700000000)


def test_secret_forms_share_one_key(monkeypatch, tmp_path):
    assert secret_key("whsec_c2VjcmV0") == secret_key("secret") == b"secret"
    assert sign("secret", "m", 1, b"x") == sign(as_whsec("secret"), "m", 1, b"x")
    assert as_whsec(SECRET) == SECRET
    with pytest.raises(ValueError, match="not base64"):
        secret_key("whsec_not*base64")
    with pytest.raises(ValueError, match="empty"):
        secret_key("")

    monkeypatch.setenv("GENSERVE_WEBHOOK_SECRET", "operator-chosen")
    assert secret_key(webhook_secret()) == b"operator-chosen"

    # Generated: created once in the state directory, handed out in whsec_ form.
    monkeypatch.delenv("GENSERVE_WEBHOOK_SECRET")
    monkeypatch.setenv("GENSERVE_STATE_DIR", str(tmp_path))
    first = webhook_secret()
    assert first.startswith("whsec_") and webhook_secret() == first
    assert secret_key(first) == (tmp_path / "webhook_secret").read_text().strip().encode()


# --- payload -----------------------------------------------------------------------------

def test_payload_shapes():
    output = {"images": [{"url": "https://x/a.png", "content_type": "image/png"}], "seed": 1}
    assert json.loads(payload("r1", output=output)) == {
        "request_id": "r1", "gateway_request_id": "r1", "status": "OK", "payload": output}
    assert json.loads(payload("r2", error="CUDA out of memory", error_status=503)) == {
        "request_id": "r2", "gateway_request_id": "r2", "status": "ERROR",
        "error": "Invalid status code: 503", "payload": {"detail": "CUDA out of memory"}}
    assert json.loads(payload("r3", error="cancelled"))["error"] == "cancelled"


@pytest.mark.parametrize("output", [{"raw": b"\x89PNG"}, {"loss": float("nan")}])
def test_unserializable_payload_is_reported_not_dropped(output):
    document = json.loads(payload("r1", output=output))
    assert document["status"] == "OK" and document["payload"] is None
    assert "not JSON serializable" in document["payload_error"]


# --- retry schedule ----------------------------------------------------------------------

def test_backoff_grows_is_capped_and_jittered():
    rng = random.Random(0)
    for attempt, nominal in [(1, 1.0), (2, 3.0), (3, 9.0), (8, 2187.0), (9, 3600.0),
                             (50, 3600.0), (10_000, 3600.0)]:
        delays = [backoff(attempt, rng=rng) for _ in range(50)]
        assert all(0.75 * nominal <= d <= nominal for d in delays), (attempt, delays)
        assert len(set(delays)) > 1  # jittered
    assert backoff(3, base_s=0.001, cap_s=0.002) <= 0.002
    with pytest.raises(ValueError, match="got 0"):
        backoff(0)


def test_next_delay_stops_when_done():
    failed, refused = Delivery(False, 500, "x", True), Delivery(False, None, "x", False)
    assert next_delay(Delivery(True, 200, None, False), 1) is None
    assert next_delay(refused, 1) is None
    assert next_delay(failed, MAX_ATTEMPTS - 1) is not None
    assert next_delay(failed, MAX_ATTEMPTS) is None


# --- loopback fixtures -------------------------------------------------------------------

_connects: list | None = None  # socket.connect targets while a test records them


def _audit(event, args):
    if event == "socket.connect" and _connects is not None:
        _connects.append(args[1])
        target = args[1]
        host = target[0] if isinstance(target, tuple) else ""
        # The network rule for tests: even a broken guard must not reach a non-loopback
        # address, so the hook blocks the connect (raising here aborts it) and the test fails.
        if host and not ipaddress.ip_address(host.split("%")[0]).is_loopback:
            raise ConnectionRefusedError(f"test guard: blocked a connect to {host}")


_hooked = False


@pytest.fixture
def connects():
    """Every socket.connect this process makes during the test (the interpreter's audit event,
    so it catches connects whatever library makes them)."""
    global _connects, _hooked
    if not _hooked:  # audit hooks cannot be removed: install one, switched by _connects
        sys.addaudithook(_audit)
        _hooked = True
    _connects = []
    yield _connects
    _connects = None


class _Receiver:
    """A loopback webhook receiver answering from a script (the last answer repeats) and
    recording (headers, body) of every POST."""

    def __init__(self, script: list[tuple[int, dict, bytes]], delay_s: float = 0.0):
        requests = self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status, headers, answer = script[min(len(requests), len(script)) - 1]
                time.sleep(delay_s)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.hostport = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.url = f"http://{self.hostport}/hooks/fal?token=abc"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class _Listener:
    """A bare listening socket: any TCP connection to it waits in the accept queue, so
    ``pending()`` after a synchronous call tells whether that call connected."""

    def __init__(self, host: str):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(8)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def pending(self) -> int:
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1


@pytest.fixture
def receiver():
    made = []
    yield lambda script, **kw: made.append(_Receiver(script, **kw)) or made[-1]
    for r in made:
        r.close()


@pytest.fixture
def listeners():
    made = []
    yield lambda host: made.append(_Listener(host)) or made[-1]
    for listener in made:
        listener.sock.close()


def _allowing(*hostports: str, **kw) -> Fetcher:
    return Fetcher(allow_hosts=frozenset(hostports), **kw)


# --- delivery ----------------------------------------------------------------------------

def test_failing_receiver_gets_the_same_signed_message_until_it_accepts(receiver):
    hook = receiver([(500, {}, b"busy"), (500, {}, b"busy"), (200, {}, b"thanks")])
    output = {"images": [{"url": "https://x/a.png", "width": 64}], "seed": 42}
    body = payload("req-1", output=output)
    fetcher = _allowing(hook.hostport)

    attempts = []
    while True:
        attempts.append(deliver(hook.url, body, "req-1", SECRET, fetcher))
        delay = next_delay(attempts[-1], len(attempts), **FAST)
        if delay is None:
            break
        time.sleep(delay)

    assert [(a.ok, a.status) for a in attempts] == [(False, 500), (False, 500), (True, 200)]
    assert attempts[0].retryable and "HTTP 500: busy" in attempts[0].error
    assert len(hook.requests) == 3
    assert {headers["webhook-id"] for headers, _ in hook.requests} == {"req-1"}
    for headers, received in hook.requests:
        verify(SECRET, headers, received)
        assert received == body
        assert headers["host"] == hook.hostport  # the URL's host, though we dial the pinned IP
        assert headers["content-type"] == "application/json"
        assert headers["user-agent"] == "genserve-webhooks"
    assert json.loads(hook.requests[-1][1]) == {
        "request_id": "req-1", "gateway_request_id": "req-1", "status": "OK",
        "payload": output}


def test_gives_up_after_max_attempts(receiver):
    hook = receiver([(503, {}, b"")])
    fetcher, attempts = _allowing(hook.hostport), 0
    while True:
        attempts += 1
        result = deliver(hook.url, b"{}", "m", SECRET, fetcher)
        if (delay := next_delay(result, attempts, max_attempts=3, **FAST)) is None:
            break
        time.sleep(delay)
    assert attempts == 3 and len(hook.requests) == 3 and not result.ok


@pytest.mark.parametrize("status,retryable", [(400, True), (404, True), (429, True),
                                              (410, False)])
def test_which_statuses_are_retried(receiver, status, retryable):
    hook = receiver([(status, {}, b"")])
    result = deliver(hook.url, b"{}", "m", SECRET, _allowing(hook.hostport))
    assert (result.ok, result.status, result.retryable) == (False, status, retryable)


@pytest.mark.parametrize("target", [
    "http://127.0.0.1:{v4}/hook",               # loopback, not allow-listed
    "http://localhost:{v4}/hook",               # a name for it (the real resolver)
    "http://hooks.internal:{v4}/hook",          # a private name (the fake resolver below)
    "http://[::1]:{v6}/hook",
    "http://10.0.0.1/hook",
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://[::ffff:169.254.169.254]/hook",
])
def test_internal_targets_are_refused_without_connecting(target, listeners, connects):
    v4, v6 = listeners("127.0.0.1"), listeners("::1")
    fetcher = Fetcher(resolver=lambda host, port: ["127.0.0.1"] if host == "hooks.internal"
                      else resolve(host, port))
    result = deliver(target.format(v4=v4.port, v6=v6.port), b"{}", "m", SECRET, fetcher)
    assert (result.ok, result.status, result.retryable) == (False, None, False)
    assert "refused" in result.error and "non-public" in result.error
    assert connects == [] and v4.pending() == 0 and v6.pending() == 0


@pytest.mark.parametrize("url", ["file:///etc/passwd", "http://user:pw@example.com/hook"])
def test_malformed_urls_are_refused(url, connects):
    result = deliver(url, b"{}", "m", SECRET, Fetcher())
    assert not result.ok and not result.retryable and "refused" in result.error
    assert connects == []


@pytest.mark.parametrize("status", [302, 307])
def test_redirects_are_reported_not_followed(status, receiver, listeners, connects):
    inner = listeners("127.0.0.1")
    hook = receiver([(status, {"Location": f"http://127.0.0.1:{inner.port}/"}, b"")])
    result = deliver(hook.url, b"{}", "m", SECRET, _allowing(hook.hostport))
    assert (result.ok, result.status) == (False, status)
    assert "redirects are not followed" in result.error
    assert len(hook.requests) == 1 and inner.pending() == 0
    assert connects == [("127.0.0.1", int(hook.hostport.rsplit(":", 1)[1]))]


def test_network_failures_are_retryable(receiver):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    result = deliver(f"http://{closed}/", b"{}", "m", SECRET, _allowing(closed))
    assert (result.ok, result.status, result.retryable) == (False, None, True)
    assert "ConnectError" in result.error

    slow = receiver([(200, {}, b"")], delay_s=1.0)
    started = time.monotonic()
    result = deliver(slow.url, b"{}", "m", SECRET, _allowing(slow.hostport), timeout_s=0.2)
    assert time.monotonic() - started < 0.9
    assert (result.ok, result.status, result.retryable) == (False, None, True)
    assert "Timeout" in result.error and "token" not in result.error  # host only, no URL

    def no_dns(host, port):
        raise Unresolvable(f"cannot resolve host {host!r}")

    result = deliver("https://hooks.example.com/", b"{}", "m", SECRET, Fetcher(resolver=no_dns))
    assert (result.ok, result.retryable) == (False, True) and "resolve" in result.error


def test_post_reads_only_a_prefix_of_the_answer(receiver):
    hook = receiver([(500, {}, b"e" * 100_000)])
    status, answer = _allowing(hook.hostport).post(hook.url, b"{}", {})
    assert status == 500 and answer == "e" * RESPONSE_PREFIX_BYTES
    result = deliver(hook.url, b"{}", "m", SECRET, _allowing(hook.hostport))
    assert len(result.error) < 300

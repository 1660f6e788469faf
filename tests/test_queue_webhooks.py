"""Webhooks from the live queue: signed (Standard Webhooks), retried with backoff after
failures with the same event id, fal's payload; refused for internal addresses at submit."""

from __future__ import annotations

import http.server
import json
import socket
import threading

import pytest

from tests.conftest import WEBHOOK_PORT
from tests.queue_util import SDXL, sdxl_input, submit, wait, wait_for


class Receiver:
    """A loopback webhook endpoint that answers 500 to the first ``fail`` deliveries."""

    def __init__(self, port: int, fail: int):
        self.fail, self.received = fail, []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                owner.received.append((dict(self.headers), body))
                code = 500 if len(owner.received) <= owner.fail else 200
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver(WEBHOOK_PORT, fail=2)
    yield r
    r.close()


def test_webhook_is_signed_retried_and_delivered_once(client, app_url, receiver):
    from genserve.webhooks import verify, webhook_secret

    url = f"http://127.0.0.1:{WEBHOOK_PORT}/hooks/genserve?token=abc"
    rid = submit(client, sdxl_input(), params={"fal_webhook": url})["request_id"]
    wait(client, rid)
    wait_for(lambda: len(receiver.received) >= 3, timeout_s=60)
    # Settle: a fourth delivery after the 200 would be a bug.
    with pytest.raises(TimeoutError):
        wait_for(lambda: len(receiver.received) > 3, timeout_s=2)
    secret = webhook_secret()  # the same state dir as the replicas: the same secret
    ids = {headers["webhook-id"] for headers, _ in receiver.received}
    assert len(ids) == 1
    for headers, body in receiver.received:
        verify(secret, headers, body)
    payload = json.loads(receiver.received[-1][1])
    assert payload["request_id"] == payload["gateway_request_id"] == rid
    assert payload["status"] == "OK"
    assert payload["payload"]["images"][0]["url"].startswith(f"{app_url}/files/{rid}/")


def test_failed_job_webhook_says_error(client, receiver):
    receiver.fail = 0
    url = f"http://127.0.0.1:{WEBHOOK_PORT}/hook"
    rid = submit(client, sdxl_input(lora_id="missing-lora"), params={"fal_webhook": url})[
        "request_id"]
    wait(client, rid)
    wait_for(lambda: receiver.received, timeout_s=30)
    payload = json.loads(receiver.received[0][1])
    assert payload["status"] == "ERROR" and payload["request_id"] == rid
    assert "missing-lora" in json.dumps(payload["payload"])


# Loopback targets only, end to end (RELIABILITY.md); the other internal ranges are covered
# by tests/test_webhooks.py with stubbed resolution.
@pytest.mark.parametrize("host", ["127.0.0.1:{free}", "localhost:{free}", "[::1]:{free}",
                                  "[::ffff:127.0.0.1]:{free}", "127.0.0.2:{free}"])
def test_internal_webhook_urls_are_refused_at_submit(client, host):
    with socket.socket() as listener:  # nothing may connect to it
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(0.5)
        free = listener.getsockname()[1]
        r = client.post(SDXL, json=sdxl_input(),
                        params={"fal_webhook": f"http://{host.format(free=free)}/hook"})
        assert r.status_code == 422, r.text
        assert "fal_webhook" in r.text
        with pytest.raises(socket.timeout):
            listener.accept()

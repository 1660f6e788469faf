"""The Python client and the job CLI without a genserve server: the SSE parser, status and
progress parsing, `--param`, usage errors, and the retry rules against a loopback HTTP server
that answers what a test scripts (a real socket, so chunking and reconnects are real)."""

from __future__ import annotations

import base64
import http.server
import io
import json
import threading
import zipfile

import pytest

from genserve.cli import main
from genserve.client import (
    Client,
    Completed,
    GenserveClientError,
    InProgress,
    Queued,
    RetryPolicy,
    SSEDecoder,
    decode_data_uri,
    output_files,
    parse_progress,
    parse_status,
)
from genserve.client._files import zip_directory
from genserve.client.commands import parse_param

FAST = RetryPolicy(max_retries=3, backoff_s=0.01)

# -- SSE -----------------------------------------------------------------------------------

STREAM = ('data: {"status": "IN_QUEUE", "queue_position": 1}\r\n\r\n'
          ': keep-alive\n\n'
          'event: status\nid: 7\ndata: {"status": "IN_PROGRESS",\ndata:  "logs": []}\n\n'
          'data: {"status": "COMPLETED", "note": "caf\u00e9"}\r\r').encode()


def _events(chunks):
    d = SSEDecoder()
    return [e for c in chunks for e in d.feed(c)] + d.flush()


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, len(STREAM)])
def test_sse_any_split_same_events(size):
    chunks = [STREAM[i:i + size] for i in range(0, len(STREAM), size)]
    events = _events(chunks)
    assert [json.loads(e.data)["status"] for e in events] == \
        ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    assert events[1].event == "status" and events[1].id == "7"
    assert events[1].data == '{"status": "IN_PROGRESS",\n "logs": []}'  # multi-line data
    assert json.loads(events[2].data)["note"] == "café"  # a UTF-8 character split in two


def test_sse_unterminated_event_is_dropped_and_bom_skipped():
    assert _events([b"\xef\xbb\xbfdata: a\n\n", b"data: never dispatched"]) == \
        _events([b"data: a\n\n"])


# -- statuses and progress -----------------------------------------------------------------

def test_parse_status_variants():
    assert parse_status({"status": "IN_QUEUE", "queue_position": 3, "logs": None}) == \
        Queued(position=3)
    s = parse_status({"status": "IN_PROGRESS", "logs": [
        {"message": "base: step 3/20", "level": "INFO", "source": "USER",
         "timestamp": "2025-01-01T00:00:00Z"}]})
    assert isinstance(s, InProgress) and s.logs[0].message == "base: step 3/20"
    done = parse_status({"status": "COMPLETED", "logs": None, "metrics": {"inference_time": 1.5},
                         "error": "boom", "error_type": "internal_error"})
    assert isinstance(done, Completed) and done.status == "COMPLETED"
    assert (done.metrics, done.error, done.error_type) == ({"inference_time": 1.5}, "boom",
                                                          "internal_error")
    with pytest.raises(GenserveClientError, match="unknown status"):
        parse_status({"status": "SLEEPING"})


@pytest.mark.parametrize("message, expected", [
    ("base: step 3/20", ("base", 3, 20, "")),
    ("refiner: step 2/5", ("refiner", 2, 5, "")),
    ("step 10/400 loss 0.1234", (None, 10, 400, "loss 0.1234")),
    ("loading LoRA abc", None),
    ("step 1/0", None),
])
def test_parse_progress(message, expected):
    got = parse_progress(message)
    assert (got and (got.stage, got.done, got.total, got.rest)) == expected


def test_output_files_and_data_uris():
    png = b"\x89PNG fake"
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    out = {"images": [{"url": uri, "width": 1}, {"url": "https://h/x/r1/image-1.png"}],
           "config_file": {"url": "https://h/f?sig=1", "file_name": "../../config.json"},
           "seed": 3, "prompt": "url"}
    found = output_files(out)
    assert [f.where for f in found] == ["images.0", "images.1", "config_file"]
    assert [f.suggested_name() for f in found] == ["images-0.png", "image-1.png", "config.json"]
    assert decode_data_uri(uri) == (png, "image/png")
    assert decode_data_uri("data:,a%20b") == (b"a b", "text/plain")


# -- CLI arguments -------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("num_inference_steps=4", (["num_inference_steps"], 4)),
    ("safety_filter=false", (["safety_filter"], False)),
    ("prompt=a cat=hat", (["prompt"], "a cat=hat")),
    ("loras=[1, 2]", (["loras"], [1, 2])),
    ("ray.num_workers=2", (["ray", "num_workers"], 2)),
    ('seed="4"', (["seed"], "4")),
    ("negative_prompt=", (["negative_prompt"], "")),
])
def test_parse_param(text, expected):
    assert parse_param(text) == expected


@pytest.mark.parametrize("argv, message", [
    (["run", "sdxl", "--param", "novalue"], "expected KEY=VALUE"),
    (["run", "sdxl", "--param", "=3"], "expected KEY=VALUE"),
    (["run", "sdxl", "--json", "[1, 2]"], "must be a JSON object"),
    (["run", "sdxl", "--json", "{nope"], "not valid JSON"),
    (["run", "sdxl", "--priority", "urgent"], "invalid choice"),
    (["run"], "the following arguments are required: endpoint"),
    (["status"], "request_id"),
    (["train", "--photo-class", "man"], "--images"),
    (["frobnicate"], "invalid choice"),
])
def test_cli_usage_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_errors_found_after_parsing_exit_2(tmp_path, capsys):
    url = ["--url", "http://127.0.0.1:9"]  # nothing is sent for these
    assert main([*url, "upload", str(tmp_path / "missing.png")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main([*url, "train", "--images", str(tmp_path / "nope")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    assert main([*url, "run", "sdxl", "-p", "a=1", "-p", "a.b=2"]) == 2
    assert "a is not an object" in capsys.readouterr().err


def test_cli_unreachable_server_exit_1(capsys):
    assert main(["--url", "http://127.0.0.1:9", "status", "abc"]) == 1
    assert "cannot reach" in capsys.readouterr().err


def test_zip_directory(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"jpg")
    archive = zip_directory(tmp_path / "photos")
    assert zipfile.ZipFile(archive).namelist() == ["a.jpg"]


# -- retries against a scripted loopback server --------------------------------------------

class Scripted:
    """An HTTP server answering from a list of (status, headers, body) per call; records every
    request's method, path and headers (and its body in `bodies`). A body that is a list is
    sent chunk by chunk."""

    def __init__(self, answers):
        self.answers, self.seen, self.bodies = list(answers), [], []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                outer.seen.append((self.command, self.path, dict(self.headers)))
                outer.bodies.append(body)
                status, headers, body = outer.answers.pop(0)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if isinstance(body, list):  # streamed, then the connection is dropped
                    self.send_header("Connection", "close")
                    self.end_headers()
                    for chunk in body:
                        self.wfile.write(chunk)
                        self.wfile.flush()
                    return
                data = json.dumps(body).encode() if not isinstance(body, bytes) else body
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted():
    servers = []

    def make(*answers):
        servers.append(Scripted(answers))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


BUSY = (503, {"Retry-After": "0"}, {"detail": "server overloaded, retry later"})
QUEUED = {"status": "IN_QUEUE", "queue_position": 0}


def test_status_retries_503_and_sends_key(scripted):
    srv = scripted(BUSY, (429, {}, {"detail": "slow down"}), (200, {}, QUEUED))
    with Client(srv.url, key="k1,k2", retry=FAST) as c:
        assert c.status("r1") == Queued(position=0)
    assert [s[1] for s in srv.seen] == ["/queue/requests/r1/status"] * 3
    assert srv.seen[0][2]["Authorization"] == "Key k1"


def test_retries_give_up_with_the_last_answer(scripted):
    srv = scripted(*[BUSY] * 4)
    with Client(srv.url, key="k", retry=FAST) as c, pytest.raises(GenserveClientError) as exc:
        c.result("r1")
    assert exc.value.status_code == 503 and "overloaded" in exc.value.message
    assert not exc.value.job_failed and len(srv.seen) == 4


def test_submit_retry_reuses_its_idempotency_key(scripted):
    ok = {"request_id": "r9", "response_url": "u", "status_url": "s", "cancel_url": "c",
          "queue_position": 2}
    srv = scripted(BUSY, (200, {}, ok))
    with Client(srv.url, key="k", retry=FAST) as c:
        handle = c.submit("genserve/sdxl", {"prompt": "x"}, priority="low", start_timeout=30,
                          webhook_url="https://example.com/hook")
    assert (handle.request_id, handle.queue_position) == ("r9", 2)
    (m1, p1, h1), (_, _, h2) = srv.seen
    assert m1 == "POST" and p1.startswith("/queue/genserve/sdxl?fal_webhook=https")
    assert h1["Idempotency-Key"] == h2["Idempotency-Key"] and len(h1["Idempotency-Key"]) >= 16
    assert (h1["X-Fal-Queue-Priority"], h1["X-Fal-Request-Timeout"]) == ("low", "30")


def test_run_is_not_retried(scripted):
    srv = scripted(BUSY, (200, {}, {"images": []}))
    with Client(srv.url, key="k", retry=FAST) as c, pytest.raises(GenserveClientError):
        c.run("sdxl", {"prompt": "x"})
    assert len(srv.seen) == 1


def test_cancel_outcomes(scripted):
    srv = scripted((202, {}, {"status": "CANCELLATION_REQUESTED"}),
                   (400, {}, {"status": "ALREADY_COMPLETED"}),
                   (404, {}, {"status": "NOT_FOUND", "detail": "no request 'r3'"}))
    with Client(srv.url, key="k", retry=FAST) as c:
        assert c.cancel("r1") is True
        assert c.cancel("r2") is False
        with pytest.raises(GenserveClientError, match="no request") as exc:
            c.cancel("r3")
    assert exc.value.status_code == 404 and srv.seen[0][0] == "PUT"


def test_stream_reopens_a_dropped_stream(scripted):
    sse = {"Content-Type": "text/event-stream"}
    first = [b'data: {"status": "IN_QUEUE", "queue_position": 1}\n\n', b'data: {"sta']
    second = [b'data: {"status": "IN_PROGRESS", "logs": [{"message": "base: step 1/2"}]}\n\n',
              b'data: {"status": "COMPLETED", "logs": null, "metrics": {}}\n\n']
    srv = scripted((200, sse, first), (200, sse, second))
    with Client(srv.url, key="k", retry=FAST) as c:
        got = list(c.stream("r1"))
    assert [s.status for s in got] == ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    assert srv.seen[0][1] == "/queue/requests/r1/status/stream?logs=1"


def test_result_of_a_cancelled_job_is_a_job_failure(scripted):
    srv = scripted((400, {}, {"detail": "request was cancelled",
                              "error_type": "request_cancelled"}))
    with Client(srv.url, key="k", retry=FAST) as c, pytest.raises(GenserveClientError) as exc:
        c.result("r1")
    assert exc.value.job_failed and exc.value.cancelled


def test_download_sends_the_key_only_to_its_own_server(scripted, tmp_path):
    ours, other = scripted((200, {}, b"ours")), scripted((200, {}, b"theirs"))
    with Client(ours.url, key="secret", retry=FAST) as c:
        assert c.download({"url": "/files/r1/a.png?sig=1"}, tmp_path / "a.png").read_bytes() \
            == b"ours"
        path = c.download(f"{other.url}/bucket/b.png?X-Amz-Signature=1", f"{tmp_path}/")
    assert path == tmp_path / "b.png" and path.read_bytes() == b"theirs"
    assert ours.seen[0][2]["Authorization"] == "Key secret"
    assert "Authorization" not in other.seen[0][2]


def test_cli_status_and_failed_result_exit_codes(scripted, capsys):
    srv = scripted((200, {}, QUEUED), (500, {}, {"detail": "pipeline crashed",
                                                 "error_type": "internal_error"}),
                   (422, {}, {"detail": [{"loc": ["body", "height"], "msg": "too big"}],
                              "message": "height: too big"}),
                   (400, {}, {"detail": "request is still in progress",
                              "error_type": "request_in_progress"}))
    argv = ["--url", srv.url, "--key", "k"]
    assert main([*argv, "status", "r1"]) == 0
    assert json.loads(capsys.readouterr().out) == {"status": "IN_QUEUE", "queue_position": 0}
    assert main([*argv, "result", "r1"]) == 1
    assert "pipeline crashed" in capsys.readouterr().err
    assert main([*argv, "submit", "sdxl", "--prompt", "x", "-p", "height=99999"]) == 2
    assert "height: too big" in capsys.readouterr().err
    assert main([*argv, "result", "r2"]) == 2  # not finished: not a failed job
    assert "still in progress" in capsys.readouterr().err


def test_cli_train_zips_uploads_submits_and_saves(scripted, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        (photos / f"{i}.jpg").write_bytes(b"jpg%d" % i)
    config = b'{"max_train_steps": 2}'
    sse = {"Content-Type": "text/event-stream"}
    events = [b'data: {"status": "IN_QUEUE", "queue_position": 0, "logs": []}\n\n',
              b'data: {"status": "IN_PROGRESS", "logs": [{"message": "step 1/2 loss 0.5", '
              b'"timestamp": "t1"}]}\n\n',
              b'data: {"status": "COMPLETED", "logs": [{"message": "step 1/2 loss 0.5", '
              b'"timestamp": "t1"}, {"message": "step 2/2 loss 0.4", "timestamp": "t2"}], '
              b'"metrics": {"inference_time": 3.0}}\n\n']
    srv = scripted(
        (200, {}, {"url": "https://files/photos.zip?sig=1", "content_type": "application/zip",
                   "file_name": "photos.zip", "file_size": 1}),
        (200, {}, {"request_id": "t1"}),
        (200, sse, events),
        (200, {}, {"config_file": {"url": "data:application/json;base64,"
                                   + base64.b64encode(config).decode(),
                                   "file_name": "config.json", "content_type": "application/json",
                                   "file_size": len(config)}}))
    code = main(["train", "--url", srv.url, "--key", "k", "--images", str(photos),
                 "--photo-class", "man", "--steps", "2", "-p", "rank=4", "-o",
                 str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert [p.split("?")[0] for _, p, _ in srv.seen] == [
        "/files/upload", "/queue/genserve/personalization", "/queue/requests/t1/status/stream",
        "/queue/requests/t1"]
    assert zipfile.ZipFile(io.BytesIO(srv.bodies[0])).namelist() == ["0.jpg", "1.jpg"]
    assert srv.seen[0][2]["Content-Type"] == "application/zip"
    assert json.loads(srv.bodies[1]) == {"images_data_url": "https://files/photos.zip?sig=1",
                                         "photo_class": "Man", "max_train_steps": 2, "rank": 4}
    assert (tmp_path / "out" / "config.json").read_bytes() == config
    assert json.loads(out)["config_file"]["path"] == str(tmp_path / "out" / "config.json")
    assert "loss 0.4" in err and "queued (position 0)" in err


def test_async_client_same_rules(scripted, tmp_path):
    import asyncio

    from genserve.client import AsyncClient

    sse = {"Content-Type": "text/event-stream"}
    srv = scripted(BUSY, (200, {}, QUEUED),
                   (200, sse, [b'data: {"status": "IN_PROGRESS", "logs": null}\n\n']),
                   (200, sse, [b'data: {"status": "COMPLETED", "logs": null}\n\n']),
                   (400, {}, {"status": "ALREADY_COMPLETED"}),
                   (200, {}, b"bytes"))

    async def scenario():
        async with AsyncClient(srv.url, key="k", retry=FAST) as c:
            assert await c.status("r1") == Queued(position=0)
            assert [s.status async for s in c.stream("r1")] == ["IN_PROGRESS", "COMPLETED"]
            assert await c.cancel("r1") is False
            path = await c.download("/files/x.bin?sig=1", tmp_path / "x.bin")
            assert path.read_bytes() == b"bytes"

    asyncio.run(scenario())
    assert len(srv.seen) == 6 and srv.seen[-1][2]["Authorization"] == "Key k"

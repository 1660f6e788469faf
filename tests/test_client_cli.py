"""`genserve.client` (sync and async) and the job CLI against the session app: run, submit,
status, stream, result, cancel, upload/download, and the `genserve run|submit|status|result|
cancel|schema` commands. The app may speak TLS (its CA comes in through SSL_CERT_FILE, as a
user would give it), so nothing here assumes http."""

from __future__ import annotations

import asyncio
import io
import json
import os

import pytest
from PIL import Image

from genserve.cli import main
from genserve.client import (
    AsyncClient,
    Client,
    Completed,
    GenserveClientError,
    InProgress,
    Queued,
    parse_progress,
)
from tests.conftest import API_KEY
from tests.util import tiny_request

ORDER = {"IN_QUEUE": 0, "IN_PROGRESS": 1, "COMPLETED": 2}


def cheap(**overrides) -> dict:
    return tiny_request(num_inference_steps=3, **overrides)


@pytest.fixture(scope="module")
def gs(app_url):
    with Client(app_url, key=API_KEY, timeout=120) as c:
        yield c


def _png(path) -> Image.Image:
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    return Image.open(path)


def _all_logs(statuses) -> list[str]:
    return [log.message for s in statuses if not isinstance(s, Queued) for log in s.logs or ()]


# -- sync client ---------------------------------------------------------------------------

def test_run_returns_the_output_and_files_download(gs, tmp_path):
    out = gs.run("sdxl", cheap())
    assert len(out["images"]) == 1 and out["prompt"] == "a cat with a hat"
    saved = gs.download_outputs(out, tmp_path)
    assert list(saved) == ["images.0"]
    assert _png(saved["images.0"]).size == (64, 64)


def test_submit_status_stream_result(gs):
    handle = gs.submit("genserve/sdxl", cheap())
    assert handle.request_id and handle.status_url.endswith(f"{handle.request_id}/status")
    assert isinstance(handle.status(), (Queued, InProgress, Completed))
    seen = list(handle.stream(logs=True))
    states = [s.status for s in seen]
    assert states[-1] == "COMPLETED" and states.count("COMPLETED") == 1
    assert [ORDER[s] for s in states] == sorted(ORDER[s] for s in states)  # never backwards
    assert seen[-1].error is None and seen[-1].metrics.get("inference_time", 0) > 0
    steps = [p for p in map(parse_progress, _all_logs(seen)) if p]
    assert steps and steps[-1].stage == "base" and steps[-1].total == 3
    done = gs.status(handle.request_id, logs=True)
    assert isinstance(done, Completed) and done.logs
    out = handle.result()
    assert out["images"][0]["url"].startswith(gs.base_url)  # a stored, signed file


def test_subscribe_sync_mode_inline_files(gs, tmp_path):
    updates = []
    out = gs.subscribe("sdxl", cheap(seed=7), on_update=updates.append, sync_mode=True)
    assert isinstance(updates[-1], Completed)
    assert out["images"][0]["url"].startswith("data:image/png;base64,")
    path = gs.download(out["images"][0], tmp_path / "inline.png")
    assert _png(path).size == (64, 64)


def test_cancel_a_running_job(gs):
    handle = gs.submit("sdxl", tiny_request(num_inference_steps=100))
    stream = handle.stream(logs=True)
    for status in stream:  # wait until it is denoising, then cancel
        if any(m.startswith("base: step") for m in _all_logs([status])):
            break
    assert handle.cancel() is True
    final = [s for s in stream][-1]
    assert isinstance(final, Completed) and final.error == "request was cancelled"
    with pytest.raises(GenserveClientError) as exc:
        handle.result()
    assert exc.value.cancelled and exc.value.job_failed and exc.value.status_code == 400
    assert handle.cancel() is False  # already completed
    with pytest.raises(GenserveClientError) as exc:
        gs.cancel("no-such-request")
    assert exc.value.status_code == 404


def test_errors_carry_the_servers_reason(gs, app_url):
    with pytest.raises(GenserveClientError) as exc:
        gs.submit("sdxl", cheap(height=7))
    assert exc.value.status_code == 422 and "height" in exc.value.message
    assert not exc.value.job_failed
    with pytest.raises(GenserveClientError) as exc:
        gs.submit("no-such-endpoint", {})
    assert exc.value.status_code == 404
    with pytest.raises(GenserveClientError) as exc:
        gs.result("no-such-request")
    assert exc.value.status_code == 404 and not exc.value.job_failed
    with Client(app_url, key="wrong-key") as bad, pytest.raises(GenserveClientError) as exc:
        bad.status("anything")
    assert exc.value.status_code == 401


def test_upload_download_round_trip(gs, tmp_path):
    data = os.urandom(5000)
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    file = gs.upload(src)
    assert (file["file_name"], file["file_size"]) == ("blob.bin", len(data))
    assert gs.download(file, tmp_path / "back.bin").read_bytes() == data
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(png, format="PNG")
    file = gs.upload(png.getvalue(), file_name="tiny.png")
    assert file["content_type"] == "image/png"
    # To a directory: the file keeps its name. Signed URLs need no key.
    with Client(gs.base_url, key="not-needed") as keyless:
        path = keyless.download(file["url"], f"{tmp_path}/dir/")
    assert path.parent == tmp_path / "dir" and path.read_bytes() == png.getvalue()


# -- async client --------------------------------------------------------------------------

def test_async_client_end_to_end(app_url, tmp_path):
    async def scenario():
        async with AsyncClient(app_url, key=API_KEY) as c:
            handle = await c.submit("sdxl", cheap(seed=3))
            states = [s.status async for s in handle.stream()]
            assert states[-1] == "COMPLETED"
            out = await handle.result()
            saved = await c.download_outputs(out, tmp_path / "async")
            assert _png(saved["images.0"]).size == (64, 64)

            updates = []

            async def on_update(status):
                updates.append(status.status)

            sub, ran = await asyncio.gather(
                c.subscribe("sdxl", cheap(seed=4), on_update=on_update),
                c.run("sdxl", cheap(seed=4)))
            assert updates[-1] == "COMPLETED"
            assert sub["seed"] == ran["seed"] == 4

            file = await c.upload(b"hello async", file_name="a.txt")
            assert (await c.download(file, tmp_path / "a.txt")).read_bytes() == b"hello async"
            assert isinstance(await c.status(handle.request_id), Completed)
            assert await c.cancel(handle.request_id) is False

    asyncio.run(scenario())


# -- CLI -----------------------------------------------------------------------------------

@pytest.fixture
def cli(app_url, capsys):
    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["--url", app_url, "--key", API_KEY, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_cli_run_saves_png(cli, tmp_path):
    code, out, err = cli("run", "sdxl", "--prompt", "a red cube", "-p", "height=64",
                         "-p", "width=64", "--param", "num_inference_steps=3", "-o",
                         str(tmp_path))
    assert code == 0, err
    result = json.loads(out)
    assert result["prompt"] == "a red cube"
    path = result["images"][0]["path"]
    assert path.endswith(".png") and _png(path).size == (64, 64)
    assert "step" in err  # the progress bar / lines went to stderr


def test_cli_submit_status_result_cancel(cli, gs, tmp_path):
    code, out, err = cli("submit", "sdxl", "--json", json.dumps(cheap()))
    assert code == 0, err
    rid = out.strip()
    list(gs.stream(rid, logs=False))  # until COMPLETED
    code, out, _ = cli("status", rid, "--logs")
    status = json.loads(out)
    assert code == 0 and status["status"] == "COMPLETED" and status["logs"]
    code, out, _ = cli("result", rid, "-o", str(tmp_path))
    assert code == 0 and _png(json.loads(out)["images"][0]["path"])
    code, out, _ = cli("cancel", rid)
    assert (code, out.strip()) == (1, "ALREADY_COMPLETED")


def test_cli_errors_exit_codes(cli):
    code, _, err = cli("run", "sdxl", "--prompt", "x", "-p", "height=7")
    assert code == 2 and "height" in err
    code, _, err = cli("result", "no-such-request")
    assert code == 2 and "no-such-request" in err
    code, _, err = cli("run", "no-such-endpoint", "--prompt", "x")
    assert code == 2 and "no-such-endpoint" in err


def test_cli_upload(cli, tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    code, out, _ = cli("upload", str(tmp_path / "notes.txt"))
    assert code == 0 and json.loads(out)["file_size"] == 2


def test_cli_schema_prints_input_schema(capsys):
    assert main(["schema", "sdxl"]) == 0
    assert "'prompt'" in capsys.readouterr().out
    assert main(["schema", "nope"]) == 2
    assert "unknown endpoint" in capsys.readouterr().err

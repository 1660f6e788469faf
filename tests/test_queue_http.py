"""The queue in fal's wire protocol, over real HTTPS against the session app: submit → status
(logs, SSE) → result with stored files, cancel in each state, idempotent replay, start
deadlines, the synchronous run path, bad input."""

from __future__ import annotations

import io
import json
import time

import httpx
import pytest
from PIL import Image

from tests.queue_util import SDXL, sdxl_input, submit, wait, wait_for

VIDEO = {"width": 64, "height": 64, "num_frames": 2, "fps": 6, "num_inference_steps": 1,
         "decode_chunk_size": 2}


def test_submit_reports_progress_and_stores_outputs(client, anon, app_url):
    body = sdxl_input(refiner=True, num_inference_steps=4, num_inference_steps_refiner=4,
                      refiner_strength=0.5)
    sub = submit(client, body)
    rid = sub["request_id"]
    root = f"{app_url}/queue/genserve/sdxl/requests/{rid}"
    assert sub["status_url"] == f"{root}/status" and sub["cancel_url"] == f"{root}/cancel"
    assert sub["response_url"] == root and sub["queue_position"] >= 0

    final = wait(client, rid, logs=True)
    assert final["error"] is None and final["metrics"]["inference_time"] > 0
    messages = [line["message"] for line in final["logs"]]
    assert any(m.startswith("base: step") for m in messages), messages
    assert any(m.startswith("refiner: step") for m in messages), messages
    assert messages[-1] == "completed"
    assert all({"message", "level", "source", "timestamp"} <= set(line) for line in final["logs"])

    result = client.get(sub["response_url"])
    assert result.status_code == 200, result.text
    image = result.json()["images"][0]
    assert image["url"].startswith(f"{app_url}/files/{rid}/") and "signature=" in image["url"]
    # The signed URL is the credential: no API key needed, and the bytes are the PNG.
    download = anon.get(image["url"])
    assert download.status_code == 200 and download.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(download.content)).size == (64, 64)
    assert anon.get(image["url"].replace("signature=", "signature=0")).status_code == 403
    assert anon.get(image["url"].split("?")[0]).status_code == 403


def test_sync_mode_returns_inline_files(client):
    rid = submit(client, {**sdxl_input(), "sync_mode": True})["request_id"]
    wait(client, rid)
    image = client.get(f"/queue/requests/{rid}").json()["images"][0]
    assert image["url"].startswith("data:image/png;base64,")


def test_status_stream_ends_with_completed(client):
    rid = submit(client, sdxl_input(num_inference_steps=8))["request_id"]
    seen = []
    with client.stream("GET", f"/queue/genserve/sdxl/requests/{rid}/status/stream",
                       params={"logs": 1}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
    states = [s["status"] for s in seen]
    order = {"IN_QUEUE": 0, "IN_PROGRESS": 1, "COMPLETED": 2}
    assert states[-1] == "COMPLETED" and states.count("COMPLETED") == 1
    assert [order[s] for s in states] == sorted(order[s] for s in states)  # monotonic
    assert any(line["message"].startswith("base: step") for line in seen[-1]["logs"])


def test_run_answers_synchronously(client, app_url):
    r = client.post("/run/genserve/sdxl", json=sdxl_input())
    assert r.status_code == 200, r.text
    assert r.json()["images"][0]["url"].startswith(f"{app_url}/files/")
    assert r.headers["x-fal-request-id"]


@pytest.mark.parametrize("path,body,status,needle", [
    (SDXL, {"prompt": "x", "num_inference_steps": 1000}, 422, "num_inference_steps"),
    (SDXL, {"prompt": "x", "num_inference_step": 4}, 422, "num_inference_step"),
    (SDXL, ["not", "an", "object"], 422, "JSON object"),
    (SDXL, {"prompt": "x", "sync_mode": "yes"}, 422, "sync_mode"),
    ("/queue/genserve/nope", {"prompt": "x"}, 404, "nope"),
    ("/queue/someone/sdxl", {"prompt": "x"}, 404, "someone/sdxl"),
    ("/run/genserve/sdxl", {"prompt": ""}, 422, "prompt"),
])
def test_bad_submissions_are_refused_with_the_reason(client, path, body, status, needle):
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert needle in r.text


def test_bad_headers_and_unknown_ids(client):
    for header, value in (("X-Fal-Request-Timeout", "soon"), ("X-Fal-Request-Timeout", "-1"),
                          ("X-Fal-Queue-Priority", "urgent"), ("Idempotency-Key", "k" * 300)):
        r = client.post(SDXL, json=sdxl_input(), headers={header: value})
        assert r.status_code == 422 and header in r.text, (header, r.text)
    assert client.get("/queue/requests/no-such-id/status").status_code == 404
    assert client.get("/queue/requests/no-such-id").status_code == 404
    r = client.put("/queue/genserve/sdxl/requests/no-such-id/cancel")
    assert r.status_code == 404 and r.json()["status"] == "NOT_FOUND"


def test_queue_routes_need_a_key(anon):
    assert anon.post(SDXL, json=sdxl_input()).status_code == 401
    assert anon.get("/queue/requests/x/status").status_code == 401
    assert anon.post("/files/upload", content=b"x").status_code == 401


def test_idempotency_key_replays_the_same_request(client):
    key = f"replay-{time.time_ns()}"
    first = submit(client, sdxl_input(), headers={"Idempotency-Key": key})
    again = submit(client, sdxl_input(), headers={"Idempotency-Key": key})
    assert again["request_id"] == first["request_id"]
    other = client.post(SDXL, json=sdxl_input(prompt="a dog"), headers={"Idempotency-Key": key})
    assert other.status_code == 422 and "Idempotency-Key" in other.text
    assert submit(client, sdxl_input())["request_id"] != first["request_id"]
    wait(client, first["request_id"])


def test_one_idempotency_key_sent_three_times_at_once(app_url):
    from concurrent.futures import ThreadPoolExecutor

    from tests.conftest import API_KEY

    key = f"race-{time.time_ns()}"

    def send(_):
        with httpx.Client(base_url=app_url, timeout=60,
                          headers={"Authorization": f"Key {API_KEY}", "Idempotency-Key": key}) as c:
            r = c.post(SDXL, json=sdxl_input())
            assert r.status_code == 200, r.text
            return r.json()["request_id"]

    with ThreadPoolExecutor(3) as pool:
        ids = set(pool.map(send, range(3)))
    assert len(ids) == 1


def _blockers(client, n: int = 20) -> list[str]:
    """Enough work that the workers' slots (2 × 8) are all taken for a while."""
    return [submit(client, sdxl_input(num_inference_steps=12))["request_id"] for _ in range(n)]


def test_cancel_in_each_state(client):
    blockers = _blockers(client)
    queued = submit(client, sdxl_input(), headers={"X-Fal-Queue-Priority": "low"})
    rid = queued["request_id"]
    assert client.get(f"/queue/requests/{rid}/status").json()["status"] == "IN_QUEUE"
    r = client.put(queued["cancel_url"])
    assert r.status_code == 202 and r.json() == {"status": "CANCELLATION_REQUESTED"}
    final = wait(client, rid, logs=True)
    assert final["error"] == "request was cancelled"
    assert not any(line["message"].startswith("started") for line in final["logs"])  # never ran
    result = client.get(queued["response_url"])
    assert result.status_code == 400 and result.json()["error_type"] == "request_cancelled"
    for b in blockers:
        wait(client, b)

    # Running: stopped between denoising steps, long before its 100 steps.
    running = submit(client, sdxl_input(num_inference_steps=100))
    rid = running["request_id"]
    wait_for(lambda: any(line["message"].startswith("base: step") for line in client.get(
        f"/queue/requests/{rid}/status", params={"logs": 1}).json()["logs"] or ()))
    assert client.put(running["cancel_url"]).status_code == 202
    final = wait(client, rid, logs=True)
    assert final["error"] == "request was cancelled"
    steps = [int(m["message"].split()[2].split("/")[0]) for m in final["logs"]
             if m["message"].startswith("base: step")]
    assert steps and max(steps) < 100

    # Completed: too late, and asking again changes nothing; the job never completes later.
    for _ in range(2):
        r = client.put(queued["cancel_url"])
        assert r.status_code == 400 and r.json() == {"status": "ALREADY_COMPLETED"}
    time.sleep(1)
    assert client.get(f"/queue/requests/{rid}/status").json()["error"] == "request was cancelled"


def test_start_deadline_fails_a_job_that_could_not_start(client):
    blockers = _blockers(client)
    late = submit(client, sdxl_input(), headers={"X-Fal-Request-Timeout": "0.001"})
    final = wait(client, late["request_id"])
    assert final["error_type"] == "request_timeout"
    r = client.get(late["response_url"])
    assert r.status_code == 504 and r.headers["x-fal-request-timeout-type"] == "user"
    # A generous deadline changes nothing.
    ok = submit(client, sdxl_input(), headers={"X-Fal-Request-Timeout": "600"})
    assert wait(client, ok["request_id"])["error"] is None
    for b in blockers:
        wait(client, b)


def test_failed_job_answers_with_its_error(client):
    sub = submit(client, sdxl_input(lora_id="never-trained"))
    final = wait(client, sub["request_id"])
    assert final["error"] and "never-trained" in final["error"]
    r = client.get(sub["response_url"])
    assert r.status_code == 404 and r.json()["field"] == "lora_id"


def test_upload_then_use_as_input_url(client, anon, app_url):
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(png, format="PNG")
    r = client.post("/files/upload", params={"file_name": "red.png"}, content=png.getvalue(),
                    headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    file = r.json()
    assert file["file_size"] == len(png.getvalue()) and file["content_type"] == "image/png"
    assert file["file_name"] == "red.png" and file["url"].startswith(f"{app_url}/files/")
    assert anon.get(file["url"]).content == png.getvalue()
    # Our own (loopback) URL is read from storage, not fetched: the SSRF guard would refuse it.
    r = client.post("/run/genserve/image-to-video", json={"image": file["url"], **VIDEO})
    assert r.status_code == 200, r.text
    assert r.json()["video"]["content_type"] == "video/mp4"


# End to end only loopback targets (RELIABILITY.md's network rule); private, link-local and
# metadata ranges are refused by the same classifier, tested with stubbed resolution in
# tests/test_fetch.py and tests/test_webhooks.py.
@pytest.mark.parametrize("host", ["127.0.0.1:9", "127.0.0.2", "[::1]", "localhost:9",
                                  "[::ffff:127.0.0.1]", "127.0.0.1:8265"])
def test_internal_input_urls_are_refused(client, host):
    r = client.post("/run/genserve/image-to-video",
                    json={"image": f"http://{host}/frame.png", **VIDEO})
    assert r.status_code == 422, r.text
    assert "non-public" in r.text


def test_jobs_are_in_the_store_with_one_terminal_state(client, state_dir):
    from genserve.jobs.store import JobStore

    rid = submit(client, sdxl_input())["request_id"]
    wait(client, rid)
    store = JobStore(f"sqlite:///{state_dir / 'usage.db'}")
    job = store.get(rid)
    assert (job.status, job.outcome, job.attempts) == ("COMPLETED", "OK", 1)
    assert job.started_at >= job.created_at and job.finished_at >= job.started_at


def test_https_only(app_url):
    assert app_url.startswith("https://")
    with pytest.raises(httpx.HTTPError):
        httpx.get(app_url.replace("https://", "http://") + "/healthz", timeout=5)

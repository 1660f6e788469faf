"""The usage log beyond the book's fields: pipeline, model, LoRA and GPU-seconds per row, an
older database gaining those columns in place, and the log read back through `GET /usage`
and `genserve usage` against the session app."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from genserve.cli import main
from genserve.usage import UsageLog, UsageRecord, pipeline_for_path
from tests.conftest import API_KEY
from tests.util import tiny_request

OLD_SCHEMA = """CREATE TABLE usage_log (id INTEGER PRIMARY KEY, request_id VARCHAR(64) NOT NULL,
started_at DATETIME NOT NULL, method VARCHAR(8) NOT NULL, endpoint VARCHAR(512) NOT NULL,
client VARCHAR(64), latency_s FLOAT NOT NULL, status_code INTEGER NOT NULL,
successful BOOLEAN NOT NULL)"""


def _record(**overrides) -> UsageRecord:
    fields = dict(request_id="r", started_at=datetime.now(timezone.utc), method="POST",
                  endpoint="/generate", client="127.0.0.1", latency_s=0.5, status_code=200)
    return UsageRecord(**{**fields, **overrides})


# -- the log itself (no Ray) ------------------------------------------------------------------

def test_an_older_database_gains_the_new_columns(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(OLD_SCHEMA))
        conn.execute(sa.text("INSERT INTO usage_log (request_id, started_at, method, endpoint, "
                             "latency_s, status_code, successful) VALUES ('old', "
                             "'2025-01-01 00:00:00', 'GET', '/healthz', 0.01, 200, 1)"))
    log = UsageLog(url)
    log.record(_record(request_id="new", pipeline="sdxl", model="m", gpu_seconds=1.25))
    rows = {r["request_id"]: r for r in log.recent()}
    assert rows["old"]["pipeline"] is None and rows["old"]["gpu_seconds"] is None
    assert rows["new"]["pipeline"] == "sdxl" and rows["new"]["gpu_seconds"] == 1.25
    UsageLog(url)  # a second replica opening it finds the columns there


def test_query_filters_and_totals(tmp_path):
    log = UsageLog(f"sqlite:///{tmp_path / 'u.db'}")
    now = datetime.now(timezone.utc)
    log.record(_record(request_id="a", pipeline="sdxl", gpu_seconds=2.0, latency_s=1.0))
    log.record(_record(request_id="b", pipeline="sdxl", gpu_seconds=1.0, latency_s=3.0,
                       status_code=422))
    log.record(_record(request_id="c", endpoint="/v1/tts", pipeline="tts", latency_s=0.5))
    log.record(_record(request_id="d", started_at=now - timedelta(days=2), pipeline="tts"))
    everything = log.query()
    assert everything["totals"]["requests"] == 4
    recent = log.query(since=now - timedelta(hours=1))
    assert recent["totals"] == {"requests": 3, "errors": 1, "mean_latency_s": 1.5,
                                "max_latency_s": 3.0, "gpu_seconds": 3.0}
    assert recent["by_pipeline"]["sdxl"]["gpu_seconds"] == 3.0
    assert recent["by_pipeline"]["tts"]["gpu_seconds"] is None  # unknown, not zero
    assert [r["request_id"] for r in log.query(endpoint="/gen")["rows"]] == ["d", "b", "a"]
    assert [r["request_id"] for r in log.query(status=422)["rows"]] == ["b"]
    assert [r["request_id"] for r in log.query(successful=True, pipeline="sdxl")["rows"]] == ["a"]
    naive = (now - timedelta(hours=1)).replace(tzinfo=None)  # read as UTC
    assert log.query(since=naive)["totals"]["requests"] == 3
    limited = log.query(limit=1)
    assert len(limited["rows"]) == 1 and limited["totals"]["requests"] == 4


@pytest.mark.parametrize("path,pipeline", [
    ("/generate", "sdxl"), ("/v1/chat/completions", "chat"), ("/queue/genserve/tts", "tts"),
    ("/queue/genserve/sdxl/requests/abc/status", "sdxl"),
    ("/run/genserve/text-to-3d", "text-to-3d"), ("/v2/models/sdxl/infer", "sdxl"),
    ("/queue/genserve/etc", None), ("/queue/requests/abc/status", None),
    ("/files/x.png", None), ("/usage", None)])
def test_pipeline_for_path_gives_only_catalog_names(path, pipeline):
    assert pipeline_for_path(path) == pipeline


def test_cli_time_arguments():
    from genserve.client.commands import parse_moment

    ago = datetime.fromisoformat(parse_moment("15m"))
    assert abs((datetime.now(timezone.utc) - ago) - timedelta(minutes=15)) < timedelta(seconds=5)
    assert parse_moment("2026-01-02") == "2026-01-02T00:00:00"  # naive: the server reads UTC
    with pytest.raises(SystemExit) as exc:
        main(["usage", "--since", "last tuesday"])
    assert exc.value.code == 2


# -- against the session app ------------------------------------------------------------------

def _wait_for_row(client, request_id: str, **params) -> dict:
    # The row is written after the response has been sent.
    deadline = time.monotonic() + 15
    while True:
        r = client.get("/usage", params={"limit": 1000, **params})
        assert r.status_code == 200, r.text
        rows = [row for row in r.json()["rows"] if row["request_id"] == request_id]
        if rows or time.monotonic() > deadline:
            assert rows, f"no usage row for {request_id} within 15 s"
            return rows[0]
        time.sleep(0.2)


@pytest.fixture(scope="module")
def generated(client) -> str:
    request_id = f"usage-{uuid.uuid4().hex[:12]}"
    r = client.post("/generate", json=tiny_request(), headers={"X-Request-ID": request_id})
    assert r.status_code == 200, r.text
    return request_id


def test_usage_route_needs_the_key(anon):
    assert anon.get("/usage").status_code == 401


def test_a_generate_row_carries_pipeline_model_and_gpu_seconds(client, generated):
    row = _wait_for_row(client, generated, endpoint="/generate")
    assert row["pipeline"] == "sdxl" and row["status_code"] == 200 and row["successful"]
    assert row["model"] and "sdxl" in row["model"]  # the base model's id (a tiny local dir)
    assert row["lora_id"] is None
    # The logical GPU fractions of base, refiner and safety are > 0, so is the cost.
    assert row["gpu_seconds"] > 0


def test_filters_and_per_pipeline_totals(client, generated):
    _wait_for_row(client, generated)
    since = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    body = client.get("/usage", params={"since": since, "pipeline": "sdxl",
                                        "success": "true"}).json()
    assert body["filters"]["pipeline"] == "sdxl"
    assert all(r["pipeline"] == "sdxl" and r["successful"] for r in body["rows"])
    assert body["totals"]["requests"] >= 1 and body["totals"]["gpu_seconds"] > 0
    assert set(body["by_pipeline"]) == {"sdxl"}
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    assert client.get("/usage", params={"since": future}).json()["totals"]["requests"] == 0
    none = client.get("/usage", params={"status": 599}).json()
    assert none["rows"] == [] and none["totals"]["requests"] == 0


@pytest.mark.parametrize("params,field", [
    ({"since": "yesterday"}, "since"), ({"limit": 0}, "limit"), ({"limit": 100000}, "limit"),
    ({"status": 42}, "status"), ({"success": "maybe"}, "success"),
    ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "since")])
def test_bad_parameters_answer_422_naming_the_field(client, params, field):
    r = client.get("/usage", params=params)
    assert r.status_code == 422, r.text
    assert field in r.text


def test_cli_usage_json_and_table(app_url, generated, client, capsys):
    _wait_for_row(client, generated)
    argv = ["usage", "--url", app_url, "--key", API_KEY, "--since", "1h", "--pipeline", "sdxl"]
    assert main([*argv, "--json", "--limit", "1000"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert generated in {r["request_id"] for r in data["rows"]}
    assert data["by_pipeline"]["sdxl"]["requests"] >= 1
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["pipeline", "requests", "errors"]
    assert any(line.startswith("sdxl ") for line in table.splitlines())
    assert main(["usage", "--url", app_url, "--key", "wrong-key"]) == 2  # 401: a bad call
    assert "API key" in capsys.readouterr().err

"""Personalization over HTTP: upload the photos, submit to the queue, follow the Ray job's
progress in the status logs, get the LoRA files as signed URLs, and generate with the trained
`lora_id` on the next request. Also: cancelling a running training job stops the Ray job, and
what only operators may ask for (local paths, storage paths) is refused."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from tests.queue_util import submit, wait, wait_for
from tests.subjects import subject_zip

TRAIN = "/queue/genserve/personalization"
SIZE = 64


@pytest.fixture(scope="module")
def photos_url(client, tmp_path_factory) -> str:
    archive = subject_zip(tmp_path_factory.mktemp("subject") / "photos.zip", n=4)
    r = client.post("/files/upload", params={"file_name": "photos.zip"},
                    content=archive.read_bytes(), headers={"Content-Type": "application/zip"})
    assert r.status_code == 200, r.text
    return r.json()["url"]


def job(photos_url: str, **fields) -> dict:
    # The production model ids: the tiny server maps them to its tiny models.
    return {"images_data_url": photos_url, "photo_class": "Man", "resolution_width": SIZE,
            "resolution_height": SIZE, "batch_size": 2, "max_train_steps": 4,
            "learning_rate": 5e-2, "rank": 4, "skip_caption_generation": True,
            "preprocessing": {"class_image_steps": 2},
            "ray": {"num_workers": 1, "use_gpu": False, "report_every_n_steps": 1}, **fields}


def test_train_over_http_then_generate_with_the_lora(client, anon, photos_url):
    sub = submit(client, job(photos_url), endpoint=TRAIN)
    final = wait(client, sub["request_id"], timeout_s=600, logs=True)
    messages = [line["message"] for line in final["logs"]]
    assert final["error"] is None, messages
    assert any(m.startswith("step ") and "/4" in m and "loss" in m for m in messages), messages

    out = client.get(sub["response_url"]).json()
    assert out["lora_id"] == sub["request_id"]
    weights = anon.get(out["diffusers_lora_file"]["url"])
    assert weights.status_code == 200 and len(weights.content) > 1000
    from safetensors.torch import load

    assert any("lora" in name for name in load(weights.content))
    config = anon.get(out["config_file"]["url"])
    assert config.status_code == 200 and json.loads(config.content)

    # Served on the next request: the LoRA changes the image, its absence restores it.
    ask = {"prompt": "a photo of TOK", "height": 64, "width": 64, "num_inference_steps": 3,
           "seed": 3, "sync_mode": True}
    with_lora = submit(client, {**ask, "lora_id": out["lora_id"]})
    plain = submit(client, ask)
    urls = []
    for rid in (with_lora["request_id"], plain["request_id"]):
        assert wait(client, rid)["error"] is None
        urls.append(client.get(f"/queue/requests/{rid}").json()["images"][0]["url"])
    assert urls[0] != urls[1]


def test_cancel_a_running_training_job_stops_the_ray_job(client, photos_url):
    from ray.job_submission import JobStatus

    from genserve.jobs.training import TrainingJobs

    sub = submit(client, job(photos_url, max_train_steps=400), endpoint=TRAIN)
    rid = sub["request_id"]
    wait_for(lambda: any(line["message"].startswith("step ") for line in client.get(
        f"/queue/requests/{rid}/status", params={"logs": 1}).json()["logs"] or ()),
        timeout_s=300, every_s=1)
    assert client.put(sub["cancel_url"]).status_code == 202
    final = wait(client, rid, timeout_s=120)
    assert final["error"] == "request was cancelled"
    status = TrainingJobs()._client().get_job_status(rid)
    assert status == JobStatus.STOPPED


@pytest.mark.parametrize("fields,name", [
    ({"images_data_url": "/etc/passwd"}, "images_data_url"),
    ({"images_data_url": "s3://someone/photos.zip"}, "images_data_url"),
    ({"model_url": "/srv/models/sdxl"}, "model_url"),
    ({"ray": {"storage_path": "/tmp/anywhere"}}, "ray.storage_path"),
])
def test_operator_only_fields_are_refused_over_http(client, photos_url, fields, name):
    r = client.post(TRAIN, json={**job(photos_url), **fields})
    assert r.status_code == 422, r.text
    assert name in r.text


def test_zip_upload_round_trip_is_byte_exact(client, anon, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.txt", "hello")
    r = client.post("/files/upload", params={"file_name": "x.zip"}, content=buf.getvalue(),
                    headers={"Content-Type": "application/zip"})
    assert anon.get(r.json()["url"]).content == buf.getvalue()

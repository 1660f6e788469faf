"""`genserve.jobs.training.TrainingJobs`: personalization runs as Ray jobs on the session's
cluster, as the HTTP queue drives them: submit (idempotent per request id), follow (progress
messages, then the stored outputs), cancel, and errors a user can act on. The jobs are tiny:
one CPU worker, 64 px, a few steps."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from genserve import lora_format as LF
from genserve.errors import GenserveError, InvalidInput, NotFound
from genserve.jobs.training import (
    RESULT_NAME,
    Cancelled,
    TrainingJobs,
    error_line,
    parse_marked,
    progress_line,
    progress_message,
)
from genserve.schemas.personalize import PersonalizeRequest
from tests.subjects import subject_zip
from training.personalize import check_user_inputs, main

SIZE = 64
STEP = re.compile(r"step (\d+)/(\d+) loss -?\d+\.\d{4}")


def request(tiny_models, images: str, **fields) -> PersonalizeRequest:
    models = {k: str(Path(v).resolve()) for k, v in tiny_models.items()}
    base = dict(
        images_data_url=images, photo_class="Man", model_url=models["sdxl-base"],
        vae_url=models["sdxl-vae"], resolution_width=SIZE, resolution_height=SIZE,
        batch_size=2, max_train_steps=4, learning_rate=5e-2, text_encoder_lr=5e-2, rank=4,
        use_dora=False, skip_caption_generation=True, with_prior_preservation=False,
        preprocessing={"captioning_model": models["captioner"],
                       "segmentation_model": models["clipseg"], "class_image_steps": 2},
        ray={"num_workers": 1, "use_gpu": False, "checkpoint_every_n_steps": 4,
             "report_every_n_steps": 2})
    return PersonalizeRequest(**{**base, **fields})


# -- the line protocol and the input rules (no Ray) ------------------------------------------

def test_progress_lines_read_back_through_rays_log_prefixes():
    line = progress_line(stage="train", step=10, total=400, loss=0.123456)
    assert line == 'genserve-progress {"stage": "train", "step": 10, "total": 400, ' \
        '"loss": 0.123456}'
    relayed = f"(TrainController pid=4242) {line} [repeated 2x across cluster]"
    assert progress_message(parse_marked(relayed, "genserve-progress ")) == \
        "step 10/400 loss 0.1235"
    event = parse_marked(progress_line(stage="prepare", message="4 images ready"),
                         "genserve-progress ")
    assert progress_message(event) == "preparing data: 4 images ready"
    assert parse_marked("genserve-progress {not json", "genserve-progress ") is None
    assert progress_message({"stage": "train", "step": "x"}) is None
    said = parse_marked(error_line("invalid_input", "bad", "images_data_url"),
                        "genserve-error ")
    assert said == {"type": "invalid_input", "message": "bad", "field": "images_data_url"}


def test_user_requests_read_local_and_s3_inputs_only_under_the_upload_roots(tmp_path):
    uploads, other = tmp_path / "uploads", tmp_path / "uploads2"
    uploads.mkdir()
    other.mkdir()
    (uploads / "me.zip").write_bytes(b"zip")
    (uploads / "escape.zip").symlink_to(other / "secret.zip")

    def req(**fields):
        return PersonalizeRequest(**{"images_data_url": "https://example.com/a.zip",
                                     "photo_class": "Man", **fields})

    assert check_user_inputs(req(), []) is False  # http(s): the fetcher's checks apply
    assert check_user_inputs(req(images_data_url=str(uploads / "me.zip")), [str(uploads)])
    assert not check_user_inputs(req(images_data_url="s3://up/users/a.zip"), ["s3://up/users"])
    refused = [({"images_data_url": str(uploads / "me.zip")}, [], "images_data_url"),
               ({"images_data_url": str(other / "x.zip")}, [str(uploads)], "images_data_url"),
               ({"images_data_url": str(uploads / "escape.zip")}, [str(uploads)],
                "images_data_url"),
               ({"captions_file_url": "/etc/passwd"}, [str(uploads)], "captions_file_url"),
               ({"images_data_url": "S3://up/usersX/a.zip"}, ["s3://up/users"],
                "images_data_url"),
               ({"images_data_url": "s3://other/users/a.zip"}, ["s3://up/users"],
                "images_data_url"),
               ({"ray": {"storage_path": str(uploads)}}, [str(uploads)], "ray.storage_path")]
    for fields, roots, field in refused:
        with pytest.raises(InvalidInput) as e:
            check_user_inputs(req(**fields), roots)
        assert e.value.field == field, fields
        assert f"`{field}`" in e.value.message


def test_cli_reads_json_requests_and_reports_bad_ones_by_field(capsys):
    assert main(["--config-json", '{"images_data_url": "x", "photo_class": "Cat"}']) == 2
    said = parse_marked(capsys.readouterr().out, "genserve-error ")
    assert said["type"] == "invalid_input"
    assert "images_data_url" in said["message"] and "photo_class" in said["message"]
    assert main(["--config-json", "[1]"]) == 2
    assert "must be a JSON object" in capsys.readouterr().err
    assert main(["--user-request", "--config-json", json.dumps(
        {"images_data_url": "/etc/passwd", "photo_class": "Man"})]) == 2
    said = parse_marked(capsys.readouterr().out, "genserve-error ")
    assert said["field"] == "images_data_url" and "local paths" in said["message"]


# -- real Ray jobs ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def uploads(tmp_path_factory) -> Path:
    """Stands in for the queue's upload storage: the one place local inputs may come from."""
    root = tmp_path_factory.mktemp("uploads")
    subject_zip(root / "photos.zip", n=4)
    return root


@pytest.fixture(scope="module")
def jobs(ray_cluster, uploads) -> TrainingJobs:
    return TrainingJobs(inputs_under=[str(uploads)])


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("outputs")


def test_job_reports_progress_and_returns_its_stored_outputs(jobs, tiny_models, uploads,
                                                             output):
    """Submitted twice (a queue replica restarting) it is still one Ray job; follow turns
    the job's lines into log messages and returns what `result.json` lists."""
    rid = "train-ok"
    req = request(tiny_models, str(uploads / "photos.zip"))
    asyncio.run(jobs.submit(rid, req, str(output)))
    asyncio.run(jobs.submit(rid, req, str(output)))
    messages: list[str] = []
    outcome = asyncio.run(jobs.follow(rid, messages.append, poll_s=0.5))
    asyncio.run(jobs.submit(rid, req, str(output)))  # after it finished: still attaches
    runs = [j for j in jobs._client().list_jobs() if j.submission_id == rid]
    assert len(runs) == 1 and runs[0].status == "SUCCEEDED"

    if messages[0] == "waiting for the cluster to start the training job":  # while PENDING
        messages.pop(0)
    assert messages[0] == "preparing data: fetching and preparing the training images"
    assert "preparing data: 4 images ready (captions: instance_prompt), 1 file skipped" \
        in messages
    steps = [tuple(map(int, m.groups())) for m in map(STEP.fullmatch, messages) if m]
    assert steps == [(2, 4), (4, 4)], messages  # report_every_n_steps=2
    assert "training: starting 1 worker" in messages
    assert messages[-1] == "saving outputs: storing the trained files"

    assert outcome.request_id == rid and outcome.metrics["step"] == 4
    assert outcome.data_report["images"] == 4
    weights = outcome.output.diffusers_lora_file
    assert weights.file_name == LF.WEIGHTS_NAME
    assert weights.url == (output / rid / LF.WEIGHTS_NAME).as_uri()
    for file in (weights, outcome.output.config_file, outcome.output.embeddings_file):
        assert (output / rid / file.file_name).stat().st_size == file.file_size > 0
    # result.json is the last file written.
    written = sorted((output / rid).iterdir(), key=lambda p: p.stat().st_mtime_ns)
    assert written[-1].name == RESULT_NAME
    assert json.loads((output / rid / "request.json").read_text()) == req.to_config()


def test_cancel_stops_a_training_job(jobs, tiny_models, uploads, output):
    from ray.util.state import list_actors

    rid = "train-cancel"
    req = request(tiny_models, str(uploads / "photos.zip"), max_train_steps=2000,
                  ray={"num_workers": 1, "use_gpu": False, "checkpoint_every_n_steps": 1000,
                       "report_every_n_steps": 1})

    async def scenario() -> list[str]:
        await jobs.submit(rid, req, str(output))
        messages: list[str] = []
        training = asyncio.Event()

        def on_progress(message: str) -> None:
            messages.append(message)
            if STEP.fullmatch(message):
                training.set()

        follow = asyncio.create_task(jobs.follow(rid, on_progress, poll_s=0.5))
        await asyncio.wait_for(training.wait(), timeout=120)
        assert await jobs.cancel(rid)
        with pytest.raises(Cancelled) as e:
            await follow
        assert e.value.message == "request was cancelled"
        assert not await jobs.cancel(rid)  # idempotent
        assert not await jobs.cancel("no-such-request")
        return messages

    messages = asyncio.run(scenario())
    assert any(STEP.fullmatch(m) for m in messages)
    assert jobs._client().get_job_status(rid) == "STOPPED"
    assert not (output / rid / RESULT_NAME).exists()
    job_id = jobs._client().get_job_info(rid).job_id
    workers = [a for a in list_actors(address=jobs._client().get_address(),
                                      filters=[("class_name", "=", "RayTrainWorker")])
               if a.job_id == job_id and a.state == "ALIVE"]
    assert not workers  # the job's Train workers went with its driver


def test_failed_jobs_say_why(jobs, tiny_models, uploads, tmp_path, output):
    """A local file outside the upload roots is refused before Ray Train starts; an
    internal URL is refused by the fetcher inside the data-preparation task: both come back
    as InvalidInput (HTTP 422) naming the field. A failure inside Ray Train (here a model
    directory that does not exist) is a GenserveError quoting the worker's error."""
    outside = subject_zip(tmp_path / "photos.zip", n=1)
    photos = str(uploads / "photos.zip")
    no_retries = {"num_workers": 1, "use_gpu": False, "max_failures": 0}
    cases = {"train-bad-local": (request(tiny_models, str(outside)), 2,
                                 "`images_data_url`: local paths are not accepted here"),
             "train-bad-url": (request(tiny_models, "http://127.0.0.1:9/photos.zip"), 2,
                               "`images_data_url`: 127.0.0.1 resolves to a non-public address"),
             "train-bad-model": (request(tiny_models, photos, model_url="/nonexistent/model",
                                         ray=no_retries), 1, "/nonexistent/model")}

    async def scenario():
        for rid, (req, _, _) in cases.items():
            await jobs.submit(rid, req, str(output))
        return await asyncio.gather(*(jobs.follow(rid, lambda m: None, poll_s=0.5)
                                      for rid in cases), return_exceptions=True)

    errors = dict(zip(cases, asyncio.run(scenario()), strict=True))
    for rid, (_, code, words) in cases.items():
        error = errors[rid]
        assert isinstance(error, GenserveError), (rid, error)
        assert isinstance(error, InvalidInput) == (code == 2), (rid, error)
        assert words in error.message, error.message
        assert jobs._client().get_job_info(rid).driver_exit_code == code
    assert errors["train-bad-local"].field == errors["train-bad-url"].field == "images_data_url"
    assert errors["train-bad-model"].message.startswith(
        "training job 'train-bad-model' failed: OSError: ")


def test_unknown_and_malformed_ids(jobs):
    with pytest.raises(NotFound):
        asyncio.run(jobs.follow("never-submitted", lambda m: None))
    with pytest.raises(InvalidInput, match="request id"):
        asyncio.run(jobs.submit("../escape", PersonalizeRequest(
            images_data_url="https://example.com/a.zip", photo_class="Man"), "/tmp/out"))
    assert issubclass(Cancelled, GenserveError)

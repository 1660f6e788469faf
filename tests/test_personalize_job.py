"""The personalization job on the session's Ray cluster: Ray Train with two CPU workers (DDP
over gloo), a worker killed mid-run and resumed, `ray job submit` through the jobs API with
Ray's token auth, and the trained LoRA served by the running SDXL deployment."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from genserve import lora_format as LF
from genserve.schemas.personalize import PersonalizeRequest
from tests.subjects import subject_zip
from training.personalize import run_job

SIZE = 64


def request(tiny_models, archive: Path, **fields) -> PersonalizeRequest:
    models = {k: str(Path(v).resolve()) for k, v in tiny_models.items()}
    base = dict(
        images_data_url=str(archive), photo_class="Man", model_url=models["sdxl-base"],
        vae_url=models["sdxl-vae"], resolution_width=SIZE, resolution_height=SIZE,
        batch_size=2, max_train_steps=4, learning_rate=5e-2, text_encoder_lr=5e-2, rank=4,
        use_dora=False, skip_caption_generation=True,
        preprocessing={"captioning_model": models["captioner"],
                       "segmentation_model": models["clipseg"], "class_image_steps": 2},
        ray={"num_workers": 2, "use_gpu": False, "checkpoint_every_n_steps": 2})
    return PersonalizeRequest(**{**base, **fields})


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return subject_zip(tmp_path_factory.mktemp("subject") / "photos.zip", n=4)


@pytest.fixture(scope="module")
def trained(ray_cluster, tiny_models, archive, lora_dir):
    """One real job, two workers, with prior preservation and the debug archives."""
    req = request(tiny_models, archive, with_prior_preservation=True, debug_dataset=True,
                  debug_loss_masks=True)
    return req, run_job(req, job_id="job-two-workers", output=str(lora_dir))


def test_two_workers_train_every_step_and_store_every_output(trained, lora_dir):
    req, result = trained
    assert result.metrics["step"] == result.metrics["total_steps"] == 4
    assert result.metrics["resumed_from"] is None and np.isfinite(result.metrics["loss"])
    out = result.output
    for field, name in (("diffusers_lora_file", LF.WEIGHTS_NAME),
                        ("kohya_lora_file", "lora_kohya.safetensors"),
                        ("embeddings_file", LF.EMBEDDINGS_NAME),
                        ("config_file", LF.CONFIG_NAME),
                        ("debug_dataset_file", "debug_dataset.zip"),
                        ("debug_masks_file", "debug_masks.zip")):
        file = getattr(out, field)
        path = lora_dir / "job-two-workers" / name
        assert file.file_name == name and file.url == path.as_uri()
        assert path.stat().st_size == file.file_size > 0
    assert out.unet_file is None
    assert json.loads((lora_dir / "job-two-workers" / LF.CONFIG_NAME).read_text()) == \
        req.to_config()
    emb = LF.load_embeddings(lora_dir / "job-two-workers" / LF.EMBEDDINGS_NAME)
    assert emb.clip_l.shape == emb.clip_g.shape == (2, 32)  # 2 tokens × tiny hidden width


def test_worker_killed_mid_run_resumes_from_the_last_checkpoint(ray_cluster, tiny_models,
                                                                archive, lora_dir, tmp_path):
    """SIGKILL one Ray Train worker once a checkpoint exists; FailureConfig restarts the
    group from that checkpoint and the run still ends at exactly max_train_steps."""
    from ray.util.state import list_actors

    steps = 40
    req = request(tiny_models, archive, max_train_steps=steps,
                  ray={"num_workers": 2, "use_gpu": False, "checkpoint_every_n_steps": 4,
                       "max_failures": 2, "storage_path": str(tmp_path / "runs")})
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.update(
        result=_catch(lambda: run_job(req, job_id="job-killed", output=str(lora_dir)))))
    worker.start()
    killed = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and worker.is_alive() and killed is None:
        # Two checkpoint directories: the first is then surely committed (a directory
        # appears when its upload starts, and a kill before the commit restarts from zero).
        if len(list((tmp_path / "runs").glob("job-killed/checkpoint_*"))) >= 2:
            actors = list_actors(address=_dashboard_url(),
                                 filters=[("class_name", "=", "RayTrainWorker"),
                                          ("state", "=", "ALIVE")])
            if actors:
                killed = actors[0].pid
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    worker.join(timeout=300)
    assert killed is not None, "the run ended before a worker could be killed"
    result = outcome["result"]
    assert not isinstance(result, BaseException), result
    assert result.metrics["step"] == steps
    assert result.metrics["resumed_from"] is not None and 0 < result.metrics["resumed_from"] < steps
    assert result.metrics["resumed_from"] % 4 == 0  # a checkpoint boundary


def test_ray_job_submit_runs_the_yaml_job(ray_cluster, tiny_models, archive, lora_dir,
                                          tmp_path):
    """The documented entry point: `ray job submit -- python -m training.personalize
    --config job.yaml`, through the jobs API (which needs Ray's auth token)."""
    import httpx
    from ray.job_submission import JobStatus, JobSubmissionClient

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(request(tiny_models, archive).to_config()))
    dashboard = _dashboard_url()
    assert httpx.get(f"{dashboard}/api/jobs/").status_code in (401, 403)  # token auth is on
    client = JobSubmissionClient(dashboard)
    job_id = _submit(client, entrypoint=f"{sys.executable} -m training.personalize --config "
                     f"{job} --job-id job-submitted --output {lora_dir}",
                     runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    status = _wait(client, job_id, timeout=300)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    printed, _ = json.JSONDecoder().raw_decode(logs[logs.index("{\n"):])
    assert printed["diffusers_lora_file"]["file_name"] == LF.WEIGHTS_NAME
    assert (lora_dir / "job-submitted" / LF.WEIGHTS_NAME).exists()


def test_stopped_job_resubmitted_resumes_from_its_last_checkpoint(ray_cluster, tiny_models,
                                                                   archive, lora_dir, tmp_path):
    """F14: `ray job stop` mid-training ends the Ray job STOPPED; the same command submitted
    again (same --job-id, same storage) continues from the last checkpoint, not from zero."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    steps, runs = 40, tmp_path / "runs"
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(request(
        tiny_models, archive, max_train_steps=steps,
        ray={"num_workers": 1, "use_gpu": False, "checkpoint_every_n_steps": 4,
             "storage_path": str(runs)}).to_config()))
    client = JobSubmissionClient(_dashboard_url())
    command = dict(entrypoint=f"{sys.executable} -m training.personalize --config {job} "
                   f"--job-id job-resubmitted --output {lora_dir}",
                   runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    first = _submit(client, **command)
    deadline = time.monotonic() + 240
    # Two checkpoint directories: the first is then surely committed.
    while len(list(runs.glob("job-resubmitted/checkpoint_*"))) < 2:
        assert time.monotonic() < deadline and client.get_job_status(first) in (
            JobStatus.PENDING, JobStatus.RUNNING), client.get_job_logs(first)[-3000:]
        time.sleep(0.1)
    client.stop_job(first)
    assert _wait(client, first, timeout=60) == JobStatus.STOPPED
    assert not (lora_dir / "job-resubmitted" / "result.json").exists()
    second = _submit(client, **command)
    assert _wait(client, second, timeout=300) == JobStatus.SUCCEEDED, \
        client.get_job_logs(second)[-3000:]
    metrics = json.loads((lora_dir / "job-resubmitted" / "result.json").read_text())["metrics"]
    assert metrics["step"] == steps
    assert metrics["resumed_from"] is not None and 4 <= metrics["resumed_from"] < steps
    print(f"\nF14: stopped after checkpoint, resubmitted run resumed from step "
          f"{metrics['resumed_from']} of {steps}")


def test_bad_job_file_fails_with_the_field_named(ray_cluster, tmp_path):
    from training.personalize import main

    job = tmp_path / "bad.yaml"
    job.write_text(yaml.safe_dump({"images_data_url": "/x.zip", "photo_class": "Cat"}))
    assert main(["--config", str(job)]) == 2


def test_trained_lora_is_served_on_the_next_request(trained, client):
    """No redeploy: the job wrote `<lora_dir>/job-two-workers/`, the running SDXL deployment
    loads it by id. With it the image changes; without it the original bytes come back."""
    body = {"prompt": "a photo of TOK", "seed": 3, "num_inference_steps": 2,
            "width": SIZE, "height": SIZE, "safety_filter": False}
    plain = _image(client, body)
    personal = _image(client, {**body, "lora_id": "job-two-workers"})
    again = _image(client, body)
    assert not np.array_equal(plain, personal)
    assert np.array_equal(plain, again)


def _image(client, body) -> np.ndarray:
    r = client.post("/generate", json=body)
    assert r.status_code == 200, r.text
    url = r.json()["images"][0]["url"]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def _dashboard_url() -> str:
    import ray

    url = ray.get_runtime_context().worker.node.webui_url  # set by ray.init on this node
    return url if url.startswith("http") else f"http://{url}"


def _submit(client, **kwargs) -> str:
    # Right after `ray.init` the node's job agent may not be registered yet ("No available
    # agent to submit job"); a real user would retry too.
    deadline = time.monotonic() + 60
    while True:
        try:
            return client.submit_job(**kwargs)
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(1)


def _wait(client, job_id: str, timeout: float):
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return status
        time.sleep(1)
    client.stop_job(job_id)
    return client.get_job_status(job_id)


def _catch(fn):
    try:
        return fn()
    except BaseException as e:  # handed to the test thread, which asserts on it
        return e


"""The personalization job: a `PersonalizeRequest` in, stored artifacts (`PersonalizeOutput`)
out. Three ways in, one code path:

- ``ray job submit -- python -m training.personalize --config job.yaml`` (the YAML holds the
  request's fields; see README),
- Python: ``personalize(PersonalizeRequest(...))`` on a machine connected to the cluster,
- HTTP: the queue (a later issue) calls the same function through a Ray job.

Steps: prepare the data once in a Ray task (GPU when ``ray.use_gpu``: captioning, CLIPSeg and
class images run models) → `TorchTrainer` over ``ray.num_workers`` workers with checkpoints
and ``FailureConfig(max_failures)`` → the final checkpoint's artifacts are copied to storage
under ``<job_id>/``. The diffusers weights file is written last: a reader that sees it sees a
complete LoRA (the SDXL deployments serve ``lora_id=<job_id>`` from that directory).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genserve import lora_format as LF
from genserve.errors import InvalidInput
from genserve.schemas.personalize import PersonalizeOutput, PersonalizeRequest
from genserve.state import default_lora_dir, state_dir

log = logging.getLogger(__name__)

CONTROLLER_POLL_S = 0.25

# name in the final checkpoint → PersonalizeOutput field, in upload order (weights last).
_OUTPUTS = (
    (LF.CONFIG_NAME, "config_file", "application/json"),
    ("debug_dataset.zip", "debug_dataset_file", "application/zip"),
    ("debug_masks.zip", "debug_masks_file", "application/zip"),
    (LF.EMBEDDINGS_NAME, "embeddings_file", "application/octet-stream"),
    ("lora_kohya.safetensors", "kohya_lora_file", "application/octet-stream"),
    ("unet.safetensors", "unet_file", "application/octet-stream"),
    (LF.WEIGHTS_NAME, "diffusers_lora_file", "application/octet-stream"),
)


def default_output() -> str:
    """Where finished LoRAs go by default: the directory the SDXL deployments serve from."""
    return str(default_lora_dir())


def new_job_id() -> str:
    return f"p-{uuid.uuid4().hex[:16]}"


@dataclass
class JobResult:
    job_id: str
    output: PersonalizeOutput
    metrics: dict[str, Any]   # the last step's report: step, loss, lr, resumed_from, …
    data_report: dict[str, Any]  # images used, files skipped and why, caption source


def personalize(request: PersonalizeRequest | dict[str, Any], *, job_id: str | None = None,
                output: str | None = None, allow_local: bool = True,
                fetch_allow_hosts: list[str] | None = None) -> PersonalizeOutput:
    """Run one personalization job on the connected Ray cluster (``ray.init()`` first if Ray
    is not initialised: inside ``ray job submit`` that joins the job's cluster) and return
    its stored outputs.

    ``job_id`` names the output directory and the served ``lora_id``; ``output`` is a local
    directory or ``s3://bucket/prefix`` (default: `default_output`). ``allow_local=False``
    refuses local-path inputs (set by servers acting for remote users).

    >>> out = personalize({"images_data_url": "s3://me/photos.zip", "photo_class": "Woman"},
    ...                   job_id="me-v1")                                    # doctest: +SKIP
    >>> out.diffusers_lora_file.url                                          # doctest: +SKIP
    'file:///home/ray/.genserve/loras/me-v1/pytorch_lora_weights.safetensors'
    """
    return run_job(request, job_id=job_id, output=output, allow_local=allow_local,
                   fetch_allow_hosts=fetch_allow_hosts).output


def run_job(request: PersonalizeRequest | dict[str, Any], *, job_id: str | None = None,
            output: str | None = None, allow_local: bool = True,
            fetch_allow_hosts: list[str] | None = None) -> JobResult:
    """`personalize`, also returning the final metrics and the data report."""
    import ray

    from genserve.storage import open_storage

    if not isinstance(request, PersonalizeRequest):
        request = PersonalizeRequest.model_validate(request)
    job_id = job_id or new_job_id()
    if not LF.LORA_ID.match(job_id):
        raise InvalidInput(f"job id {job_id!r} must match {LF.LORA_ID_PATTERN}", "job_id")
    storage = open_storage(output or default_output())
    cfg = request.to_config()
    if not ray.is_initialized():
        ray.init()
    # Ray Train's controller takes one report per poll (2 s by default): a job with fast steps
    # would wait on it. The controller inherits the driver's environment.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(CONTROLLER_POLL_S))
    data_ref = _prepare_task(cfg).remote(cfg, allow_local=allow_local,
                                         fetch_allow_hosts=fetch_allow_hosts or [])
    result = build_trainer(cfg, data_ref, job_id).fit()
    if result.checkpoint is None:
        raise RuntimeError(f"job {job_id}: training finished without a checkpoint")
    data = ray.get(data_ref)
    files: dict[str, Any] = {}
    with result.checkpoint.as_directory() as d:
        final = Path(d)
        for name, content in data.debug_files.items():
            (final / name).write_bytes(content)
        for name, field, content_type in _OUTPUTS:
            if (final / name).exists():
                files[field] = storage.put_file(f"{job_id}/{name}", final / name, content_type)
    log.info("job %s done: %s (metrics %s)", job_id, sorted(files), result.metrics)
    return JobResult(job_id, PersonalizeOutput(**files), dict(result.metrics or {}),
                     data.report)


def _prepare_task(cfg: dict[str, Any]):
    import ray

    from training.prepare import prepare

    use_gpu = cfg["ray"]["use_gpu"]
    return ray.remote(prepare).options(num_cpus=1, num_gpus=1 if use_gpu else 0,
                                       max_retries=1, name="personalize-prepare")


def build_trainer(cfg: dict[str, Any], data: Any, job_id: str):
    """The `TorchTrainer` for a job config; ``data`` is a `PreparedData` or its ObjectRef."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from training.loop import train_loop_per_worker

    opts = cfg["ray"]
    resources = opts["resources_per_worker"]
    if resources is not None and opts["use_gpu"] and "GPU" not in resources:
        resources = {**resources, "GPU": 1}
    scaling = ScalingConfig(num_workers=opts["num_workers"], use_gpu=opts["use_gpu"],
                            resources_per_worker=resources)
    storage = opts["storage_path"] or str(state_dir() / "train")
    run = RunConfig(name=job_id, storage_path=storage,
                    failure_config=FailureConfig(max_failures=opts["max_failures"]),
                    checkpoint_config=CheckpointConfig(num_to_keep=2))
    return TorchTrainer(train_loop_per_worker, train_loop_config={"job": cfg, "data": data},
                        scaling_config=scaling, run_config=run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.personalize",
        description="Train a personalization LoRA (SDXL, pivotal tuning) with Ray Train.")
    parser.add_argument("--config", required=True, help="YAML job file (request fields)")
    parser.add_argument("--job-id", default=None, help="output directory name and served "
                        "lora_id (default: generated)")
    parser.add_argument("--output", default=None, help="local directory or s3://bucket/prefix "
                        f"(default: {default_output()})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        request = PersonalizeRequest.from_yaml(args.config)
        out = personalize(request, job_id=args.job_id, output=args.output)
    except InvalidInput as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2
    except Exception as e:  # pydantic's ValidationError lists every bad field
        if type(e).__name__ == "ValidationError":
            print(f"error: {args.config}: {e}", file=sys.stderr)
            return 2
        raise
    print(json.dumps(out.model_dump(mode="json", exclude_none=True), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

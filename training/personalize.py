"""The personalization job: a `PersonalizeRequest` in, stored artifacts (`PersonalizeOutput`)
out. Three ways in, one code path:

- ``ray job submit -- python -m training.personalize --config job.yaml`` (the YAML holds the
  request's fields; see README),
- Python: ``personalize(PersonalizeRequest(...))`` on a machine connected to the cluster,
- HTTP: the queue submits the same command as a Ray job (`genserve.jobs.training`), with
  ``--config-key`` (the request JSON it stored), ``--user-request`` (local paths and s3://
  inputs only under ``--inputs-under``, where it put the user's uploads) and ``--progress``
  (``genserve-progress {...}`` lines it turns into the request's log).

Steps: prepare the data once in a Ray task (GPU when ``ray.use_gpu``: captioning, CLIPSeg and
class images run models) → `TorchTrainer` over ``ray.num_workers`` workers with checkpoints
and ``FailureConfig(max_failures)`` → the final checkpoint's artifacts are copied to storage
under ``<job_id>/``. The diffusers weights file is written after the other artifacts: a reader
that sees it sees a complete LoRA (the SDXL deployments serve ``lora_id=<job_id>`` from that
directory); ``result.json`` (outputs, metrics, data report) comes last of all: a reader that
sees it sees a finished job.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genserve import lora_format as LF
from genserve.errors import InvalidInput
from genserve.jobs.training import RESULT_NAME, error_line, progress_line
from genserve.schemas.personalize import PersonalizeOutput, PersonalizeRequest
from genserve.state import default_lora_dir, state_dir

log = logging.getLogger(__name__)

CONTROLLER_POLL_S = 0.25
# Request fields that name files the job reads (model locations are loaded as models only).
USER_INPUT_FIELDS = ("images_data_url", "captions_file_url")
MAX_ERROR_CHARS = 1000  # of an unexpected error's message, as the job reports it

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
            fetch_allow_hosts: list[str] | None = None, progress: bool = False) -> JobResult:
    """`personalize`, also returning the final metrics and the data report. ``progress``
    prints ``genserve-progress {...}`` lines (stages and every Ray Train report) to stdout,
    for a Ray job followed by `genserve.jobs.training`."""
    import ray

    from genserve.storage import open_storage

    if not isinstance(request, PersonalizeRequest):
        request = PersonalizeRequest.model_validate(request)
    job_id = job_id or new_job_id()
    if not LF.LORA_ID.match(job_id):
        raise InvalidInput(f"job id {job_id!r} must match {LF.LORA_ID_PATTERN}", "job_id")
    storage = open_storage(output or default_output())
    # A rerun under the same id is not finished until it writes its own result.
    storage.delete_prefix(f"{job_id}/{RESULT_NAME}")
    cfg = request.to_config()
    if not ray.is_initialized():
        ray.init()
    # Ray Train's controller takes one report per poll (2 s by default): a job with fast steps
    # would wait on it. The controller inherits the driver's environment.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(CONTROLLER_POLL_S))
    _say(progress, stage="prepare", message="fetching and preparing the training images")
    data_ref = _prepare_task(cfg).remote(cfg, allow_local=allow_local,
                                         fetch_allow_hosts=fetch_allow_hosts or [])
    # Waited for here, not only inside the workers: a bad input surfaces as the task's
    # InvalidInput instead of a worker failure that FailureConfig would retry, and the
    # workers could only block on it anyway (on one GPU they could not even be placed).
    data = ray.get(data_ref)
    _say(progress, stage="prepare", message=_data_summary(data.report))
    trainer = build_trainer(cfg, data_ref, job_id)
    if progress:  # read by Ray at fit(); runs in the Train controller (its prints reach
        trainer.run_config.callbacks.append(_progress_callback())  # this job's log via Ray)
    workers = cfg["ray"]["num_workers"]
    _say(progress, stage="train", message=f"starting {workers} worker{'s' * (workers > 1)}")
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"job {job_id}: training finished without a checkpoint")
    _say(progress, stage="save", message="storing the trained files")
    files: dict[str, Any] = {}
    with result.checkpoint.as_directory() as d:
        final = Path(d)
        for name, content in data.debug_files.items():
            (final / name).write_bytes(content)
        for name, field, content_type in _OUTPUTS:
            if (final / name).exists():
                files[field] = storage.put_file(f"{job_id}/{name}", final / name, content_type)
    out = JobResult(job_id, PersonalizeOutput(**files), dict(result.metrics or {}), data.report)
    doc = {"job_id": job_id, "output": out.output.model_dump(mode="json", exclude_none=True),
           "metrics": out.metrics, "data_report": out.data_report}
    storage.put_bytes(f"{job_id}/{RESULT_NAME}", json.dumps(doc, default=str).encode(),
                      "application/json")
    log.info("job %s done: %s (metrics %s)", job_id, sorted(files), result.metrics)
    return out


def check_user_inputs(request: PersonalizeRequest, inputs_under: Sequence[str] = ()) -> bool:
    """Rules for a request that came from a remote user (HTTP): a local path or s3:// URI in
    an input field would let them read any file or object the cluster can, so those are
    accepted only inside ``inputs_under`` (where the queue stored their uploads), and the
    checkpoint location is the server's to choose. Raises `InvalidInput` naming the field;
    returns whether a (permitted) local path remains, i.e. the ``allow_local`` to run with.

    >>> check_user_inputs(PersonalizeRequest(images_data_url="/etc/shadow",
    ...                                      photo_class="Man"))          # doctest: +SKIP
    InvalidInput: `images_data_url`: local paths are not accepted here; ...
    """
    local = False
    for field in USER_INPUT_FIELDS:
        location = getattr(request, field)
        kind = _kind(location) if location else None
        if kind is None:
            continue
        if not any(_inside(location, root) for root in inputs_under):
            raise InvalidInput(f"`{field}`: {kind} are not accepted here; give an http(s) "
                               "URL or a data: URI, or upload the file (POST /files/upload) "
                               "and pass its URL", field)
        local = local or kind == "local paths"
    if request.ray.storage_path is not None:
        raise InvalidInput("`ray.storage_path` is set by the server for HTTP jobs; leave it "
                           f"out (got {request.ray.storage_path!r})", "ray.storage_path")
    return local


def _kind(location: str) -> str | None:
    if location.startswith("/"):
        return "local paths"
    if location[:5].lower() == "s3://":
        return "s3:// URIs"
    return None


def _inside(location: str, root: str) -> bool:
    """Whether ``location`` lies inside ``root`` (same kind); symlinks resolved."""
    from genserve.storage import parse_s3_uri

    if location.startswith("/") and root.startswith("/"):
        return Path(os.path.realpath(location)).is_relative_to(os.path.realpath(root))
    if location[:5].lower() == "s3://" and root.startswith("s3://"):
        bucket, key = parse_s3_uri("s3://" + location[5:])
        root_bucket, prefix = parse_s3_uri(root)
        prefix = prefix.strip("/")
        return bucket == root_bucket and (not prefix or key.startswith(prefix + "/"))
    return False


def _data_summary(report: dict[str, Any]) -> str:
    text = f"{report.get('images', '?')} images ready (captions: {report.get('captions')})"
    skipped = report.get("skipped") or []
    n = len(skipped)
    return text + (f", {n} file{'s' * (n != 1)} skipped" if n else "")


def _say(enabled: bool, **event: Any) -> None:
    if enabled:
        print(progress_line(**event), flush=True)


def _progress_callback():
    """A Ray Train callback printing rank 0's step and loss (built on first use: ray.train is
    a heavy import)."""
    from ray.train import UserCallback

    class ProgressLines(UserCallback):
        """Prints rank 0's step and loss after every Ray Train report, so the lines follow
        the job's ``report_every_n_steps`` cadence. Runs in the Train controller."""

        def after_report(self, run_context, metrics, checkpoint) -> None:
            # Defensive: an exception here would fail the run, for the sake of a log line.
            rank0 = metrics[0] if metrics else {}
            if "step" not in rank0:
                return
            loss = rank0.get("loss")
            print(progress_line(stage="train", step=rank0["step"],
                                total=rank0.get("total_steps"),
                                loss=None if loss is None else round(float(loss), 6)),
                  flush=True)

    return ProgressLines()


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
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="YAML job file (request fields)")
    source.add_argument("--config-json", help="the request fields as one JSON object")
    source.add_argument("--config-key", help="storage key, in --output, of the request JSON "
                        "(how the HTTP queue passes requests: they may hold large data: URIs)")
    parser.add_argument("--job-id", default=None, help="output directory name and served "
                        "lora_id (default: generated)")
    parser.add_argument("--output", default=None, help="local directory or s3://bucket/prefix "
                        f"(default: {default_output()})")
    parser.add_argument("--user-request", action="store_true", help="the request came from a "
                        "remote user: local paths and s3:// URIs only under --inputs-under")
    parser.add_argument("--inputs-under", action="append", default=[], metavar="LOCATION",
                        help="directory or s3://bucket/prefix holding uploaded inputs "
                        "(repeatable)")
    parser.add_argument("--fetch-allow-host", action="append", default=[], metavar="HOST",
                        help="internal host:port the job may fetch inputs from (repeatable)")
    parser.add_argument("--progress", action="store_true", help="print 'genserve-progress "
                        "{json}' lines (stages, step and loss)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        request = _read_request(args)
        allow_local = check_user_inputs(request, args.inputs_under) if args.user_request \
            else True
        result = run_job(request, job_id=args.job_id, output=args.output,
                         allow_local=allow_local, fetch_allow_hosts=args.fetch_allow_host,
                         progress=args.progress)
    except Exception as e:
        invalid = invalid_input_in(e)
        if invalid is not None:
            print(error_line("invalid_input", invalid.message, invalid.field), flush=True)
            print(f"error: {invalid.message}", file=sys.stderr)
            return 2
        if type(e).__name__ == "ValidationError":  # pydantic's lists every bad field
            source = args.config or "request"
            print(error_line("invalid_input", f"{source}: {e}"), flush=True)
            print(f"error: {source}: {e}", file=sys.stderr)
            return 2
        # The root cause's line (Ray Train's error ends with the worker's exception); the
        # traceback follows in the log.
        said = [x for x in f"{type(e).__name__}: {e}".splitlines() if x.strip()][-1]
        print(error_line("internal", said[:MAX_ERROR_CHARS]), flush=True)
        raise
    print(json.dumps(result.output.model_dump(mode="json", exclude_none=True), indent=2))
    return 0


def _read_request(args: argparse.Namespace) -> PersonalizeRequest:
    if args.config:
        return PersonalizeRequest.from_yaml(args.config)
    if args.config_json is not None:
        text = args.config_json
    else:
        import tempfile

        from genserve.storage import open_storage

        with tempfile.TemporaryDirectory(prefix="genserve-request-") as tmp:
            try:
                path = open_storage(args.output or default_output()).get_file(
                    args.config_key, Path(tmp) / "request.json")
            except FileNotFoundError:
                raise InvalidInput(f"no request stored under {args.config_key!r}") from None
            text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except ValueError as e:
        raise InvalidInput(f"the request is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"the request must be a JSON object, got {type(data).__name__}")
    return PersonalizeRequest.model_validate(data)


def invalid_input_in(exc: BaseException) -> InvalidInput | None:
    """The `InvalidInput` behind ``exc``, looking through Ray's wrappers: a task's
    `RayTaskError` (``cause``), Ray Train's worker and controller errors, chained causes."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        if isinstance(cause, InvalidInput):
            return cause
        if isinstance(e, InvalidInput):
            return e
        todo += [cause, e.__cause__, e.__context__, getattr(e, "controller_failure", None)]
        todo += list((getattr(e, "worker_failures", None) or {}).values())
    return None


if __name__ == "__main__":
    sys.exit(main())

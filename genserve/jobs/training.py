"""Personalization training as Ray jobs, for the HTTP queue: submit, follow, cancel, collect.

A training run lasts minutes to hours, longer than a queue replica may live, so it runs as a
Ray job (``python -m training.personalize``) through the jobs API, not inside the replica.
The Ray submission id *is* the queue's request id: a replica that restarts and submits the
same request again attaches to the running job instead of starting a second one.

What passes between the job and this runner, all keyed by the request id:

- ``<output>/<id>/request.json``: the validated request, written by `TrainingJobs.submit`
  (a request may carry data: URIs of megabytes, too long for a command line);
- lines in the job's log (Ray prefixes lines from other processes with ``(Actor pid=…)``)::

      genserve-progress {"stage": "prepare", "message": "fetching the training images"}
      genserve-progress {"stage": "train", "step": 10, "total": 400, "loss": 0.1234}
      genserve-error {"type": "invalid_input", "message": "`images_data_url`: …", "field": …}

- ``<output>/<id>/result.json``: the outputs, metrics and data report, written by the job
  after every other file: when it exists the run is complete.

>>> jobs = TrainingJobs(inputs_under=["/srv/genserve/uploads"])          # doctest: +SKIP
>>> await jobs.submit(request_id, request, output="s3://artifacts/loras")  # doctest: +SKIP
>>> outcome = await jobs.follow(request_id, on_progress=print)            # doctest: +SKIP
step 10/400 loss 0.1234
>>> outcome.output.diffusers_lora_file.url                                # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genserve.errors import GenserveError, InvalidInput, NotFound, Unavailable
from genserve.lora_format import LORA_ID, LORA_ID_PATTERN
from genserve.schemas.personalize import PersonalizeOutput, PersonalizeRequest
from genserve.storage import open_storage

log = logging.getLogger(__name__)

PROGRESS_MARK = "genserve-progress "
ERROR_MARK = "genserve-error "
REQUEST_NAME = "request.json"
RESULT_NAME = "result.json"
# Stage names in progress lines → how the queue's log says them.
STAGES = {"prepare": "preparing data", "train": "training", "save": "saving outputs"}
# Environment a training job needs from the submitting process (non-secret settings only:
# runtime_env is visible in the dashboard). Everything else comes from the node itself.
PASS_ENV = ("GENSERVE_STATE_DIR", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE",
            "TRANSFORMERS_OFFLINE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION",
            "AWS_DEFAULT_REGION")
# Right after a cluster starts its job agent may not be registered yet; Ray says so and a
# retry succeeds.
AGENT_WAIT_S = 60
# A dashboard that stops answering for this long (restart, network) fails `follow`.
LOST_AFTER_S = 60
ERROR_LINES = 8  # log lines quoted when a job dies without saying why


class Cancelled(GenserveError):
    """The training job was stopped (`TrainingJobs.cancel`) before it finished."""

    status_code = 400

    def __init__(self, message: str = "request was cancelled", field: str | None = None):
        super().__init__(message, field)


@dataclass
class TrainingOutcome:
    """A finished job's ``result.json``."""

    request_id: str
    output: PersonalizeOutput        # the stored files (url as the storage gives it)
    metrics: dict[str, Any]          # the last report: step, total_steps, loss, lr, …
    data_report: dict[str, Any]      # images used, files skipped and why, caption source


# -- the log-line protocol (both sides) ------------------------------------------------------

def progress_line(**event: Any) -> str:
    """``genserve-progress {...}``: one progress event as the job prints it.

    >>> progress_line(stage="train", step=10, total=400, loss=0.1234)
    'genserve-progress {"stage": "train", "step": 10, "total": 400, "loss": 0.1234}'
    """
    return PROGRESS_MARK + json.dumps(event)


def error_line(kind: str, message: str, field: str | None = None) -> str:
    """``genserve-error {...}``: why the job failed; ``kind`` "invalid_input" or "internal"."""
    return ERROR_MARK + json.dumps({"type": kind, "message": message, "field": field})


def parse_marked(line: str, mark: str) -> dict[str, Any] | None:
    """The JSON object after ``mark`` in a log line, or None. Text around it (Ray's
    ``(TrainController pid=…)`` prefix, a ``[repeated 2x]`` suffix) is ignored."""
    at = line.find(mark)
    if at < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(line, at + len(mark))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def progress_message(event: Mapping[str, Any]) -> str | None:
    """A progress event as the queue logs it: ``"step 10/400 loss 0.1234"``,
    ``"preparing data: 4 images ready"``; None for an event it cannot read.

    >>> progress_message({"stage": "train", "step": 10, "total": 400, "loss": 0.12341})
    'step 10/400 loss 0.1234'
    """
    try:
        if "step" in event:
            text = f"step {int(event['step'])}/{int(event['total'])}"
            if event.get("loss") is not None:
                text += f" loss {float(event['loss']):.4f}"
            return text
        stage = STAGES.get(str(event.get("stage")), str(event.get("stage")))
        return f"{stage}: {event['message']}"
    except (KeyError, TypeError, ValueError):
        return None


# -- the runner ------------------------------------------------------------------------------

class TrainingJobs:
    """Personalization jobs on a Ray cluster, driven through its jobs API.

    ``address``: the dashboard (``http://host:8265``); default: the connected cluster's (or
    the jobs client's own discovery: ``RAY_ADDRESS``, the local cluster). Ray's auth token is
    sent by the jobs client itself when the process runs in token mode (``RAY_AUTH_MODE=token``,
    token from ``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``), as on every node of our cluster.

    ``inputs_under``: local directories / ``s3://bucket/prefix`` locations where the queue put
    users' uploads; the job accepts local paths and s3:// URIs in the input fields only there.
    ``fetch_allow_hosts``: internal hosts the job may fetch from (as the app's setting).
    ``python``: the interpreter the job runs (the cluster's nodes share this image's layout).
    """

    def __init__(self, address: str | None = None, *, inputs_under: Sequence[str] = (),
                 fetch_allow_hosts: Sequence[str] = (), python: str = sys.executable,
                 env_vars: Mapping[str, str] | None = None):
        self.address = address
        self.inputs_under = list(inputs_under)
        self.fetch_allow_hosts = list(fetch_allow_hosts)
        self.python = python
        self.env_vars = dict(env_vars or {})
        self._client_obj = None
        self._lock = threading.Lock()

    # -- public ------------------------------------------------------------------------------

    async def submit(self, request_id: str, request: PersonalizeRequest, output: str) -> None:
        """Start the job for ``request_id`` (its Ray submission id), or attach to the one
        already started under that id. ``output``: the storage location (local directory or
        ``s3://bucket/prefix``) the outputs go to, under ``<request_id>/``."""
        if not LORA_ID.match(request_id):
            raise InvalidInput(f"request id {request_id!r} must match {LORA_ID_PATTERN} (it "
                               "names the output directory and the served lora_id)")
        await asyncio.to_thread(self._submit, request_id, request, output)

    async def follow(self, request_id: str, on_progress: Callable[[str], None],
                     poll_s: float = 1.0) -> TrainingOutcome:
        """Wait for the job to end, passing each progress message to ``on_progress``.

        Returns the outcome when it succeeded; raises `InvalidInput` when the request could
        not be used (bad archive, unreachable URL), `Cancelled` when it was stopped,
        `GenserveError` with the job's last error lines when it failed otherwise, `NotFound`
        when the cluster has no such job.
        """
        offset, pending_told, lost_since = 0, False, None
        while True:
            try:
                info = await asyncio.to_thread(self._job_info, request_id)
                if info is None:
                    raise NotFound(f"no training job {request_id!r} on the Ray cluster")
                logs = await asyncio.to_thread(self._client().get_job_logs, request_id)
            except GenserveError:
                raise
            except Exception as exc:  # dashboard restarting, connection reset: keep trying
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since > LOST_AFTER_S:
                    raise Unavailable(f"lost contact with the Ray jobs API for training job "
                                      f"{request_id!r}: {exc}") from exc
                await asyncio.sleep(poll_s)
                continue
            lost_since = None
            if info.status == "PENDING" and not pending_told:
                pending_told = True
                on_progress("waiting for the cluster to start the training job")
            offset = _emit_progress(logs, offset, on_progress)
            # Logs were read after the status: for a finished job they are complete.
            if info.status == "SUCCEEDED":
                return await asyncio.to_thread(self._result, request_id, info)
            if info.status == "STOPPED":
                raise Cancelled()
            if info.status == "FAILED":
                raise _failure(request_id, info, logs)
            await asyncio.sleep(poll_s)

    async def cancel(self, request_id: str) -> bool:
        """Ask Ray to stop the job; True when a stop was requested. Idempotent: a finished
        or unknown job is left as it is (False)."""
        return await asyncio.to_thread(self._cancel, request_id)

    async def stop(self, request_id: str, timeout_s: float = 60.0, poll_s: float = 0.5) -> str:
        """Cancel and wait until Ray reports the job ended (its workers gone), so a queue job
        is marked CANCELLED only once nothing of it still runs. Returns Ray's final status
        ("STOPPED", "SUCCEEDED" if it finished first, …), or "UNKNOWN" after ``timeout_s``."""
        await self.cancel(request_id)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            info = await asyncio.to_thread(self._job_info, request_id)
            if info is None:
                return "UNKNOWN"
            if info.status.is_terminal():
                return str(info.status.value)
            await asyncio.sleep(poll_s)
        return "UNKNOWN"

    def entrypoint(self, request_id: str, output: str) -> str:
        """The job's shell command."""
        args = [self.python, "-m", "training.personalize",
                "--config-key", f"{request_id}/{REQUEST_NAME}", "--job-id", request_id,
                "--output", output, "--user-request", "--progress"]
        for location in self.inputs_under:
            args += ["--inputs-under", location]
        for host in self.fetch_allow_hosts:
            args += ["--fetch-allow-host", host]
        return shlex.join(args)

    # -- blocking work (run in threads) ------------------------------------------------------

    def _client(self):
        with self._lock:
            if self._client_obj is None:
                from ray.job_submission import JobSubmissionClient

                self._client_obj = JobSubmissionClient(self.address or _dashboard_address())
            return self._client_obj

    def _job_info(self, request_id: str):
        try:
            return self._client().get_job_info(request_id)
        except RuntimeError as exc:
            if _missing(exc):
                return None
            raise

    def _submit(self, request_id: str, request: PersonalizeRequest, output: str) -> None:
        client = self._client()
        if self._job_info(request_id) is not None:
            log.info("training job %s exists; attaching", request_id)
            return
        open_storage(output).put_bytes(f"{request_id}/{REQUEST_NAME}",
                                       json.dumps(request.to_config()).encode(),
                                       "application/json")
        env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
        env.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers forks otherwise warn
        env.update(self.env_vars)
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            try:
                client.submit_job(entrypoint=self.entrypoint(request_id, output),
                                  submission_id=request_id, runtime_env={"env_vars": env},
                                  metadata={"genserve_kind": "personalization",
                                            "genserve_output": output})
                return
            except RuntimeError as exc:
                if "already exists" in str(exc):  # a concurrent submit won the race
                    return
                if "No available agent" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def _cancel(self, request_id: str) -> bool:
        try:
            return bool(self._client().stop_job(request_id))
        except RuntimeError as exc:
            if _missing(exc):
                return False
            raise

    def _result(self, request_id: str, info) -> TrainingOutcome:
        output = (info.metadata or {}).get("genserve_output")
        if not output:
            raise GenserveError(f"training job {request_id!r} was not started by genserve "
                                "(no output location in its metadata)")
        with tempfile.TemporaryDirectory(prefix="genserve-result-") as tmp:
            try:
                path = open_storage(output).get_file(f"{request_id}/{RESULT_NAME}",
                                                     Path(tmp) / RESULT_NAME)
            except FileNotFoundError:
                raise GenserveError(f"training job {request_id!r} succeeded but wrote no "
                                    f"{RESULT_NAME} under {output}") from None
            doc = json.loads(path.read_text(encoding="utf-8"))
        return TrainingOutcome(request_id, PersonalizeOutput.model_validate(doc["output"]),
                               doc.get("metrics", {}), doc.get("data_report", {}))


def _emit_progress(logs: str, offset: int, on_progress: Callable[[str], None]) -> int:
    """Pass the progress in ``logs[offset:]``'s complete lines on; return the new offset."""
    if len(logs) < offset:  # the log restarted (not expected; reread rather than skip)
        offset = 0
    end = logs.rfind("\n") + 1
    for line in logs[offset:end].splitlines():
        event = parse_marked(line, PROGRESS_MARK)
        message = progress_message(event) if event is not None else None
        if message is not None:
            on_progress(message)
    return max(offset, end)


def _failure(request_id: str, info, logs: str) -> GenserveError:
    """The error for a FAILED job: what its ``genserve-error`` line says, else its last lines."""
    said = None
    for line in logs.splitlines():
        said = parse_marked(line, ERROR_MARK) or said
    if said is not None and said.get("type") == "invalid_input":
        return InvalidInput(str(said.get("message")), said.get("field"))
    if said is not None:
        return GenserveError(f"training job {request_id!r} failed: {said.get('message')}")
    lines = [line for line in logs.splitlines() if line.strip()][-ERROR_LINES:]
    code = getattr(info, "driver_exit_code", None)
    why = "\n".join(lines) or (info.message or "no output")
    return GenserveError(f"training job {request_id!r} failed"
                         + (f" (exit code {code})" if code is not None else "") + f":\n{why}")


def _missing(exc: Exception) -> bool:
    # The jobs client turns HTTP errors into RuntimeError("Request failed with status code
    # 404: Job ... does not exist.").
    text = str(exc)
    return "404" in text or "does not exist" in text


def _dashboard_address() -> str | None:
    """The connected cluster's dashboard URL, or None to let the jobs client discover it."""
    import ray

    if not ray.is_initialized():
        return None
    from ray._private import services, worker

    try:
        url = worker.get_dashboard_url()  # a driver knows it from its node
    except AttributeError:
        url = None
    # A worker process (a Serve replica) reads the cluster's record of it.
    url = url or services.get_webui_url_from_internal_kv()
    if not url:
        return None
    return url if url.startswith("http") else f"http://{url}"

"""The queue worker: claims jobs from the store, runs them on the serving graph, stores their
outputs, then marks them COMPLETED and delivers their webhooks.

Each replica runs one loop (started in the constructor, on the replica's event loop) that
renews its leases, stops cancelled jobs, fails jobs past their start deadline, claims new jobs
up to its concurrency and sends due webhooks. A replica that dies loses its leases; another
replica (or its own replacement) claims those jobs again, so nothing stays IN_PROGRESS.
Concurrency is per kind: inference jobs only occupy handle calls (the pipelines have their own
queues and backpressure); a training job occupies a Ray job on the cluster.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.endpoints import Handles, run_endpoint
from genserve import metrics
from genserve.endpoints import endpoint
from genserve.errors import GenserveError
from genserve.jobs.outputs import store_outputs
from genserve.jobs.store import CANCELLED, ERROR, OK, Finish, Job, JobStore

log = logging.getLogger("genserve.worker")
# Progress lines per job are written at most this often (the first and last always).
LOG_EVERY_S = 0.5
# Pipelines refusing work (their bounded queues are full): wait and try again, this long.
BACKPRESSURE_RETRY_S = 600.0
WAKE_MIN_S = 0.02
# How often the jobs-per-state gauge is refreshed from the database (one GROUP BY query).
COUNT_EVERY_S = 5.0


class _JobLog:
    """A job's log lines, written to the store in order and throttled: a fast diffusion reports
    every step, the status API needs a few lines a second at most."""

    def __init__(self, store: JobStore, job_id: str):
        self.store, self.job_id = store, job_id
        self.pending: str | None = None
        self.last = 0.0
        self.lock = asyncio.Lock()

    def progress(self, message: str) -> None:
        self.pending = message
        if time.monotonic() - self.last >= LOG_EVERY_S:
            asyncio.ensure_future(self.flush())

    async def flush(self) -> None:
        async with self.lock:
            if self.pending is not None:
                message, self.pending = self.pending, None
                self.last = time.monotonic()
                await asyncio.to_thread(self.store.add_log, self.job_id, message)

    async def write(self, message: str, level: str = "INFO") -> None:
        await self.flush()
        async with self.lock:
            await asyncio.to_thread(self.store.add_log, self.job_id, message, level)


@serve.deployment(max_ongoing_requests=16)
class JobWorker:
    def __init__(self, base: DeploymentHandle | None = None,
                 refiner: DeploymentHandle | None = None,
                 safety: DeploymentHandle | None = None, llm: DeploymentHandle | None = None,
                 tts: DeploymentHandle | None = None, video: DeploymentHandle | None = None,
                 mesh3d: DeploymentHandle | None = None, llm_name: str | None = None,
                 database_url: str | None = None, files_location: str | None = None,
                 fetch_allow_hosts: list[str] | None = None, lora_dir: str | None = None,
                 training_models: dict[str, str] | None = None,
                 max_concurrent_jobs: int = 8, max_concurrent_training: int = 1,
                 lease_s: float = 15.0, poll_s: float = 0.1, max_attempts: int = 3,
                 webhook_retry_base_s: float = 1.0):
        from genserve.fetch import Fetcher
        from genserve.files import open_file_service
        from genserve.jobs.inputs import FileFetcher
        from genserve.usage import default_database_url

        self.store = JobStore(database_url or default_database_url(), max_attempts)
        self.files = open_file_service(files_location)
        self.fetcher = Fetcher(allow_hosts=frozenset(fetch_allow_hosts or ()))
        self.handles = Handles(base, refiner, safety, llm, tts, video, mesh3d, llm_name,
                               FileFetcher(self.files, self.fetcher))
        self.lora_dir = lora_dir
        self.training_models = dict(training_models or {})
        self.limits = {"inference": max_concurrent_jobs, "training": max_concurrent_training}
        self.lease_s, self.poll_s = lease_s, poll_s
        self.webhook_retry_base_s = webhook_retry_base_s
        # The replica's id (tests and operators map a job's lease back to the replica), made
        # unique per incarnation.
        try:
            replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside Serve (tests constructing it directly)
            replica = "local"
        self.worker_id = f"{replica}-{uuid.uuid4().hex[:8]}"
        self.running: dict[str, tuple[asyncio.Task, str]] = {}
        self.cancel_asked: set[str] = set()
        self.sending: set[str] = set()
        self._training = None
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop().create_task(self._main())

    # -- the loop ----------------------------------------------------------------------------

    async def _main(self) -> None:
        renewed = swept = counted = 0.0
        while True:
            try:
                now = time.monotonic()
                if now - renewed >= self.lease_s / 3:
                    await self._renew()
                    renewed = now
                if now - swept >= 0.5:
                    await asyncio.to_thread(self.store.expire_start_deadlines)
                    swept = now
                if now - counted >= COUNT_EVERY_S:
                    metrics.jobs_by_state(await asyncio.to_thread(self.store.counts))
                    counted = now
                for kind, limit in self.limits.items():
                    free = limit - sum(1 for _, k in self.running.values() if k == kind)
                    for job in await asyncio.to_thread(self.store.claim, self.worker_id, kind,
                                                       free, self.lease_s):
                        task = asyncio.ensure_future(self._execute(job))
                        self.running[job.id] = (task, kind)
                        task.add_done_callback(lambda _, i=job.id: self.running.pop(i, None))
                        if job.attempts == 1:  # a retry's started_at is its first claim's
                            metrics.queue_wait(job.endpoint, kind,
                                               (job.started_at or time.time()) - job.created_at)
                    metrics.jobs_running(
                        kind, sum(1 for _, k in self.running.values() if k == kind))
                await self._send_webhooks()
            except RuntimeError as exc:
                if "after shutdown" in str(exc):  # the replica is stopping
                    return
                log.exception("worker loop iteration failed")
            except Exception:  # a database hiccup must not end the loop
                log.exception("worker loop iteration failed")
            # At most one iteration per WAKE_MIN_S however often the ingress wakes us: under
            # a burst, claims are batched instead of competing with submits for the database.
            await asyncio.sleep(WAKE_MIN_S)
            try:  # the next poll, or sooner when the ingress says a job arrived
                await asyncio.wait_for(self._wake.wait(), self.poll_s - WAKE_MIN_S)
            except TimeoutError:
                pass
            self._wake.clear()

    async def _renew(self) -> None:
        ids = list(self.running)
        held, cancel = await asyncio.to_thread(self.store.renew, self.worker_id, ids,
                                               self.lease_s)
        for job_id in ids:
            task = self.running.get(job_id, (None,))[0]
            if task is None:
                continue
            if job_id not in held:
                log.warning("lost the lease on job %s; dropping its result", job_id)
                task.cancel()
            elif job_id in cancel and job_id not in self.cancel_asked:
                self.cancel_asked.add(job_id)
                task.cancel()

    # -- one job -----------------------------------------------------------------------------

    async def _execute(self, job: Job) -> None:
        spec = endpoint(job.endpoint)
        joblog = _JobLog(self.store, job.id)
        started = time.perf_counter()
        try:
            await joblog.write(f"started on {self.worker_id} (attempt {job.attempts})")
            body = spec.request.model_validate(job.input)
            if spec.kind == "training":
                output = await self._train(job, body, joblog)
            else:
                output = await self._infer(spec, body, joblog)
            if not job.sync_mode:
                output = await store_outputs(
                    self.files, job.id, output,
                    lambda message: joblog.write(message, "WARNING"))
            end = Finish(OK, output=output,
                         metrics={"inference_time": round(time.perf_counter() - started, 4)})
        except asyncio.CancelledError:
            if job.id not in self.cancel_asked:
                raise  # lease lost or replica shutting down: someone else finishes it
            end = Finish(CANCELLED, error="request was cancelled",
                         error_type="request_cancelled", error_status=400)
        except GenserveError as exc:
            from genserve.jobs.training import Cancelled

            if isinstance(exc, Cancelled):  # `ray job stop` from outside the queue
                end = Finish(CANCELLED, error="request was cancelled",
                             error_type="request_cancelled", error_status=400)
            else:
                end = Finish(ERROR, error=exc.message, error_type=type(exc).__name__,
                             error_status=exc.status_code,
                             output={"detail": exc.message, "field": exc.field})
        except Exception as exc:
            log.exception("job %s failed", job.id)
            end = Finish(ERROR, error=f"internal error ({type(exc).__name__})",
                         error_type="internal_error", error_status=500)
        finally:
            self.cancel_asked.discard(job.id)
        await joblog.write(
            "completed" if end.outcome == OK else f"{end.outcome.lower()}: {end.error}",
            "INFO" if end.outcome == OK else "ERROR")
        if await asyncio.to_thread(self.store.finish, job.id, self.worker_id, end):
            metrics.job_finished(job.endpoint, end.outcome)
        else:
            log.warning("job %s finished here but its lease had moved on", job.id)

    async def _infer(self, spec, body, joblog: _JobLog) -> dict:
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        deadline = time.monotonic() + BACKPRESSURE_RETRY_S
        delay = 0.5
        while True:
            try:
                return await run_endpoint(spec, self.handles, body, joblog.progress)
            except (BackPressureError, DeploymentUnavailableError):
                # The pipeline's queue is full: the job waits here (its lease held) rather
                # than failing; the client sees IN_PROGRESS with a log line.
                if time.monotonic() > deadline:
                    raise
                await joblog.write(f"pipeline busy, retrying in {delay:.1f}s")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _train(self, job: Job, body, joblog: _JobLog) -> dict:
        from genserve.jobs.train_job import _storage_location, run_training

        if self._training is None:
            from genserve.jobs.training import TrainingJobs

            # The job may read our uploads in place and fetch from the operator's hosts.
            self._training = TrainingJobs(inputs_under=[_storage_location(self.files)],
                                          fetch_allow_hosts=sorted(self.fetcher.allow_hosts))
        return await run_training(self._training, job, body, self.files, self.lora_dir,
                                  self.training_models, joblog.progress)

    # -- webhooks ----------------------------------------------------------------------------

    async def _send_webhooks(self) -> None:
        rows = await asyncio.to_thread(self.store.claim_webhooks, self.worker_id, 8,
                                       self.lease_s)
        for row in rows:
            if row["event_id"] not in self.sending:
                self.sending.add(row["event_id"])
                task = asyncio.ensure_future(self._deliver(row))
                task.add_done_callback(lambda _, e=row["event_id"]: self.sending.discard(e))

    async def _deliver(self, row: dict) -> None:
        from genserve import webhooks

        job = await asyncio.to_thread(self.store.get, row["job_id"])
        if job.outcome == OK:
            output = self.files.resolve(job.output, job.base_url or "", prefix=job.id)
            body = webhooks.payload(job.id, output=output)
        else:
            body = webhooks.payload(job.id, error=job.error, error_status=job.error_status)
        result = await asyncio.to_thread(webhooks.deliver, row["url"], body, row["event_id"],
                                         webhooks.webhook_secret(), self.fetcher)
        delay = webhooks.next_delay(result, row["attempts"] + 1,
                                    base_s=self.webhook_retry_base_s)
        retry_at = None if delay is None else time.time() + delay
        await asyncio.to_thread(self.store.webhook_attempted, row["event_id"], ok=result.ok,
                                status=result.status, error=result.error, retry_at=retry_at)

    # -- Serve hooks -------------------------------------------------------------------------

    def wake(self) -> None:
        """A job was just submitted: claim now instead of at the next poll (a hint; polling
        alone is correct, only slower)."""
        self._wake.set()

    def check_health(self) -> None:
        if self._loop.done():
            raise RuntimeError("the job loop stopped: "
                               f"{self._loop.exception() if not self._loop.cancelled() else ''}")

    def running_jobs(self) -> list[str]:
        return sorted(self.running)

"""Where a claimed job ends: its result stored with its ack, a retry scheduled with
exponential backoff, or a dead letter -- each written atomically by the
:class:`~sw_core.pipeline.store.JobStore`, each Redis step retried over connection blips."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import Redis

from sw_core.exceptions import JobError, is_transient
from sw_core.ops.metrics import record_job_latencies
from sw_core.pipeline.jobs import Job
from sw_core.pipeline.results import pack_result
from sw_core.pipeline.store import JobStore
from sw_core.retry import RetryPolicy, retry_async
from workers.jobs.retry_mover import RetryMover

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Retries of a Redis step that failed on a connection blip (short: the worker lives on).
_REDIS_RETRY = RetryPolicy(attempts=4, initial_delay_s=0.2, multiplier=2.0, max_delay_s=2.0)


class JobOutcomes:
    """Finishes the jobs of one worker and counts them (``jobs_done``, ``jobs_failed``)."""

    def __init__(
        self,
        redis: Redis,
        store: JobStore,
        policy: RetryPolicy,
        retry_mover: RetryMover,
        name: str,
    ) -> None:
        self.redis = redis
        self.store = store
        self.policy = policy
        self.retry_mover = retry_mover
        self.name = name
        self.jobs_done = 0
        self.jobs_failed = 0

    async def finish(
        self, jobs: list[Job], results: list[Any], *, duration_s: float | None = None
    ) -> None:
        """Store each result with its ack; failures (exceptions in ``results``) go to
        :meth:`failed`. Logs one line per job (``duration_s``: the batch's run time)."""
        done: list[tuple[Job, bytes]] = []
        batch = len(jobs)
        for job, result in zip(jobs, results, strict=True):
            if isinstance(result, BaseException):
                await self.failed(job, result, batch=batch, duration_s=duration_s)
                continue
            try:
                packed = pack_result(result, self.store.settings.max_result_bytes)
            except JobError as exc:
                await self.failed(job, exc, batch=batch, duration_s=duration_s)
                continue
            except (TypeError, ValueError, OverflowError) as exc:
                error = JobError(f"the job's result cannot be stored: {exc}")
                await self.failed(job, error, batch=batch, duration_s=duration_s)
                continue
            done.append((job, packed))
        if done:
            flags = await self.with_retries(
                lambda: self.store.complete(done, self.name), "store results"
            )
            self.jobs_done += sum(flags or [])
            finished = [job for (job, _), ok in zip(done, flags or [], strict=False) if ok]
            for job, packed in done:
                ok = job in finished
                _job_line(
                    job,
                    "done" if ok else "finished elsewhere",
                    batch,
                    duration_s,
                    f"result {len(packed)} bytes",
                )
            await record_job_latencies(self.redis, finished, keys=self.store.keys)

    async def failed(
        self,
        job: Job,
        exc: BaseException,
        *,
        reason: str | None = None,
        batch: int = 0,
        duration_s: float | None = None,
    ) -> None:
        """Retry a transient failure with backoff, dead-letter anything else."""
        self.jobs_failed += 1
        error_type = type(exc).__name__
        message = str(exc) or error_type
        transient = reason is None and is_transient(exc)
        if transient and job.attempt < self.policy.attempts:
            delay_s = self.policy.delay_s(job.attempt)
            _job_line(
                job,
                "retry",
                batch,
                duration_s,
                f"attempt {job.attempt}/{self.policy.attempts} failed ({error_type}: "
                f"{message}); retry in {delay_s:.2f} s",
            )
            await self.with_retries(
                lambda: self.store.retry(job, error_type, message, delay_s, self.name),
                "schedule a retry",
            )
            self.retry_mover.wake()
            return
        reason = reason or ("retries_exhausted" if transient else "permanent")
        _job_line(
            job,
            "dead",
            batch,
            duration_s,
            f"dead-lettered after attempt {job.attempt} ({reason}): {error_type}: {message}",
            level=logging.WARNING,
        )
        await self.with_retries(
            lambda: self.store.dead_letter_job(job, error_type, message, reason, self.name),
            "write a dead letter",
        )

    async def duplicate(self, job: Job) -> None:
        """Dead-letter an entry whose job id belongs to another job, leaving that job alone."""
        self.jobs_failed += 1
        job.counted = False  # nobody registered this entry, so nobody counted its request
        message = (
            f"job id {job.job_id} already belongs to a job that is not this entry's "
            f"({job.entry_id}); the entry was not run and the job was left as it was"
        )
        log.warning("entry %s dead-lettered (duplicate_job_id): %s", job.entry_id, message)
        await self.with_retries(
            lambda: self.store.dead_letter_job(
                job, "JobError", message, "duplicate_job_id", self.name, touch_job=False
            ),
            "write a dead letter",
        )

    async def with_retries(self, call: Callable[[], Awaitable[T]], what: str) -> T | None:
        """Run a Redis step, retrying connection blips; None when Redis stays away
        (the entry stays pending and is reclaimed later, so nothing is lost)."""
        try:
            return await retry_async(call, _REDIS_RETRY, what=f"worker {self.name}: {what}")
        except Exception as exc:
            log.error("worker %s could not %s: %s", self.name, what, exc)
            return None


def _job_line(
    job: Job,
    outcome: str,
    batch: int,
    duration_s: float | None,
    detail: str,
    *,
    level: int = logging.INFO,
) -> None:
    """The one log line of a job's attempt: id, model, task, batch size, duration, outcome."""
    took = "" if duration_s is None else f" duration={duration_s:.3f}s"
    log.log(
        level,
        "job %s %s model=%s task=%s inputs=%d batch=%d%s: %s",
        job.job_id,
        outcome,
        job.model,
        job.task,
        len(job.inputs),
        batch,
        took,
        detail,
        extra={
            "job_id": job.job_id,
            "outcome": outcome,
            "model": job.model,
            "task": job.task,
            "batch": batch,
            "duration_s": duration_s,
        },
    )

"""Starting a batch: jobs cancelled or past their deadline end here, the rest are marked
running (poison entries, delivered too often, and entries that reuse another job's id are
dead-lettered).

A job Redis refuses to mark running because it is out of memory has failed this attempt
with that cause, recorded like any failure (retried with backoff, then dead-lettered as
a ``CacheError`` that says so). Left pending, its entry was claimed again and again, each
claim a delivery, until it was dead-lettered as ``poison`` -- "workers probably crashed" --
for a job that never ran.
"""

from __future__ import annotations

import logging
from functools import partial

from sw_core.cache.errors import out_of_memory_error
from sw_core.exceptions import JobError
from sw_core.pipeline.jobs import Job
from sw_core.pipeline.lifecycle import JobEnds
from sw_core.pipeline.store import (
    START_CANCELLED,
    START_DUPLICATE,
    START_LOST,
    START_NO_MEMORY,
    JobStore,
)
from sw_core.schema import JobStatus
from sw_core.settings import Settings
from workers.jobs.outcomes import JobOutcomes

log = logging.getLogger(__name__)


async def start_batch(
    batch: list[Job],
    *,
    store: JobStore,
    ends: JobEnds,
    outcomes: JobOutcomes,
    settings: Settings,
    name: str,
) -> list[Job]:
    """The jobs of ``batch`` to run now, marked running, with their delivery counts."""
    checks = await outcomes.with_retries(lambda: ends.check(batch), "check cancels and deadlines")
    if checks is None:
        return []
    live: list[Job] = []
    for job, outcome in zip(batch, checks, strict=True):
        if outcome == "ok":
            live.append(job)
        elif outcome != "gone":
            log.info("worker %s: job %s %s before it started", name, job.job_id, outcome)
    if not live:
        return []
    starts = await outcomes.with_retries(lambda: store.start(live, name), "mark jobs running")
    if starts is None:
        return []
    runnable: list[Job] = []
    for job, deliveries in zip(live, starts, strict=True):
        if deliveries == START_CANCELLED:
            # cancelled between the check and the start: never run, ended with the ack
            # (job_end counts it only when the cancel did not already)
            await outcomes.with_retries(partial(ends.end, job, JobStatus.CANCELLED), "end job")
            log.info("worker %s: job %s cancelled before it started", name, job.job_id)
        elif deliveries == START_LOST:
            log.info("worker %s: %s is no longer ours; skipped", name, job.entry_id)
        elif deliveries == START_DUPLICATE:
            await outcomes.duplicate(job)
        elif deliveries == START_NO_MEMORY:
            await outcomes.failed(job, out_of_memory_error(f"marking job {job.job_id} running"))
        elif deliveries < 0:
            poison = JobError(
                f"entry {job.entry_id} was delivered {-deliveries} times, more than "
                f"max_deliveries={settings.max_deliveries}: workers probably "
                "crashed while running it, or could not start it (see their logs)"
            )
            await outcomes.failed(job, poison, reason="poison")
        else:
            job.deliveries = deliveries
            runnable.append(job)
    return runnable

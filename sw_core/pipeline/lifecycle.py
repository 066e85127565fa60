"""Jobs that end without a result: cancelled or past their deadline (atomic, with the ack).

Kept beside :class:`~sw_core.pipeline.store.JobStore`: the producer flags a cancel
(``sw_core/lua/job_cancel.lua``), workers end such jobs here -- before a batch starts
(:meth:`JobEnds.check`) or between two steps of a running generate job (:meth:`JobEnds.end`).
Both end states are counted in ``sw:stats`` (``cancelled``, ``expired``), never as errors,
and never dead-letter.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from sw_core.keys import Keys
from sw_core.lua_scripts import lua_source
from sw_core.pipeline.jobs import Job, now_ms
from sw_core.schema import ENDED_STATUSES, JobStatus
from sw_core.settings import Settings


class JobEnds:
    """Ends cancelled and expired jobs of one consumer group."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self._end = redis.register_script(lua_source("job_end"))

    async def check(self, jobs: list[Job]) -> list[str]:
        """Per job ``ok`` (run it), ``cancelled`` / ``expired`` (ended now, do not run it)
        or ``gone`` (no longer this group's to run)."""
        return await self._run([(job, "check") for job in jobs])

    async def end(self, job: Job, status: JobStatus) -> bool:
        """End a running job as ``cancelled`` or ``expired``; False if it was not ours."""
        if status not in ENDED_STATUSES:
            raise ValueError(f"status {status!r} is not one of {ENDED_STATUSES}")
        [outcome] = await self._run([(job, status)])
        return outcome == status

    async def cancel_requested(self, jobs: list[Job]) -> list[bool]:
        """Whether a cancel was asked for each job (one round trip)."""
        if not jobs:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for job in jobs:
                pipe.hget(self.keys.job(job.job_id), "cancel_requested")
            flags = await pipe.execute()
        return [flag == b"1" for flag in flags]

    async def _run(self, items: list[tuple[Job, str]]) -> list[str]:
        if not items:
            return []
        keys = [self.keys.jobs, self.keys.stats]
        args: list[Any] = [self.keys.jobs_group, now_ms(), self.settings.result_ttl_s]
        for job, mode in items:
            keys += [self.keys.job(job.job_id), self.keys.job_done(job.job_id)]
            args += [job.entry_id, mode, "" if job.deadline_ms is None else job.deadline_ms]
        reply = await self._end(keys=keys, args=args)
        return [r.decode() if isinstance(r, bytes) else str(r) for r in reply]


def past_deadline(job: Job, now: int | None = None) -> bool:
    """Whether ``job`` has a deadline and it has passed."""
    return job.deadline_ms is not None and (now if now is not None else now_ms()) > job.deadline_ms

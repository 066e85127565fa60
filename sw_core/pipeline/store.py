"""Every job-state transition of the pipeline, each one atomic (Lua or a single command).

:class:`JobStore` is the only place that writes job state: marking a batch running,
storing results with the ack, scheduling retries or dead letters with the ack, moving due
retries back to the stream and handing entries back at shutdown. Reading the stream and
keeping claims alive are :class:`~sw_core.pipeline.job_stream.JobStream`'s. The Lua
sources live in ``sw_core/lua/pipeline_*.lua``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import msgpack
from redis.asyncio import Redis

from sw_core.lua_scripts import lua_source
from sw_core.pipeline.job_stream import JobStream
from sw_core.pipeline.jobs import Job, encode_job, job_id_of, now_ms
from sw_core.pipeline.stream_fields import keep_duplicate_fields
from sw_core.settings import Settings

log = logging.getLogger(__name__)

#: Longest error message kept in a job hash or dead letter.
MAX_ERROR_CHARS = 2000
#: Longest field value copied into a dead letter (an oversized payload is cut here).
MAX_DEAD_FIELD_BYTES = 64 << 10
#: The dead-letter stream is trimmed to about this many entries (oldest dropped first).
DLQ_MAX_ENTRIES = 100_000
#: :meth:`JobStore.start` for an entry no longer pending for this consumer.
START_LOST = 0
#: :meth:`JobStore.start` for an entry whose job id belongs to a job waiting for another entry.
START_DUPLICATE = -(1 << 62)
#: :meth:`JobStore.start` for a job cancelled after the worker's check: not started.
START_CANCELLED = -(1 << 62) + 1
#: :meth:`JobStore.start` for a job Redis could not mark running: it is out of memory.
START_NO_MEMORY = -(1 << 61)


class JobStore(JobStream):
    """Atomic job-state transitions on one Redis (and, from :class:`JobStream`, the reads
    and claims of the jobs stream).

    Args:
        redis: an asyncio client with ``decode_responses=False``.
        settings: TTLs, limits and the key prefix.
    """

    def __init__(self, redis: Redis, settings: Settings) -> None:
        super().__init__(redis, settings)
        keep_duplicate_fields(redis)  # an entry's repeated field must be seen, not overwritten
        self._start = redis.register_script(lua_source("pipeline_start"))
        self._complete = redis.register_script(lua_source("pipeline_complete"))
        self._fail = redis.register_script(lua_source("pipeline_fail"))
        self._move = redis.register_script(lua_source("pipeline_move_retries"))
        self._handback = redis.register_script(lua_source("pipeline_handback"))

    # ------------------------------------------------------------------ transitions
    async def start(self, jobs: list[Job], consumer: str) -> list[int]:
        """Mark ``jobs`` running, each only if its entry is the one its job id waits for.

        Returns per job its delivery count when started, :data:`START_LOST` (0) when the entry
        is no longer ours, minus the delivery count when it is poison, :data:`START_DUPLICATE`
        when its job id already belongs to a job that waits for another entry (the job's own
        retries, replays and hand-backs name their entry in the job hash; any other entry
        with that id must not touch the job), :data:`START_CANCELLED` when the job was
        cancelled (it is not started: end it with the ack), :data:`START_NO_MEMORY` when
        Redis, out of memory, refused to mark the job running (nothing was written). A job
        started without a job hash (hand-added, or not written by a producer) gets
        ``counted = False``: whatever its fields claim, nobody counted its request.
        """
        keys = [self.keys.jobs] + [self.keys.job(j.job_id) for j in jobs]
        args: list[Any] = [
            self.group,
            consumer,
            now_ms(),
            self.settings.result_ttl_s,
            self.settings.max_deliveries,
        ]
        for job in jobs:
            args += [job.entry_id, job.attempt, job.model, job.task, job.submitted_ms]
        reply = [int(x) for x in await self._start(keys=keys, args=args)]
        out: list[int] = []
        for job, state, deliveries in zip(jobs, reply[0::2], reply[1::2], strict=True):
            if state == -3:
                out.append(START_CANCELLED)
            elif state == -2:
                out.append(START_DUPLICATE)
            elif state == -4:
                out.append(START_NO_MEMORY)
            elif state == -1:
                out.append(-deliveries)
            elif state == 0:
                out.append(START_LOST)
            else:
                if state == 2:
                    job.counted = False
                out.append(deliveries)
        return out

    async def complete(self, done: list[tuple[Job, bytes]], worker: str) -> list[bool]:
        """Store each ``(job, msgpack result)`` and ack it; False for jobs finished elsewhere."""
        if not done:
            return []
        keys = [self.keys.jobs, self.keys.stats]
        args: list[Any] = [self.group, self.settings.result_ttl_s, now_ms(), worker]
        for job, packed in done:
            keys += [self.keys.job(job.job_id), self.keys.job_done(job.job_id)]
            args += [job.entry_id, packed, "0" if job.counted else "1", job.model]
        return [bool(x) for x in await self._complete(keys=keys, args=args)]

    async def retry(
        self, job: Job, error_type: str, message: str, delay_s: float, worker: str
    ) -> bool:
        """Ack this attempt and schedule attempt + 1 in ``delay_s``; False if finished elsewhere."""
        now = now_ms()
        again = Job(
            job_id=job.job_id,
            model=job.model,
            task=job.task,
            inputs=job.inputs,
            params=job.params,
            attempt=job.attempt + 1,
            submitted_ms=job.submitted_ms,
            counted=True,  # counted now, in this transaction, if it was not yet
            first_failure_ms=job.first_failure_ms or now,
            deadline_ms=job.deadline_ms,
        )
        fields = _flatten(encode_job(again))
        return await self._run_fail(
            job.entry_id,
            job.job_id,
            "retry",
            now,
            worker,
            error_type,
            message,
            job.attempt,
            not job.counted,
            int(delay_s * 1000),
            fields,
            job.model,
        )

    async def dead_letter(
        self,
        *,
        entry_id: str,
        job_id: str,
        fields: dict[str, bytes],
        model: str,
        task: str,
        attempt: int,
        error_type: str,
        message: str,
        reason: str,
        worker: str,
        counted: bool | None,
        submitted_ms: int | None = None,
        first_failure_ms: int | None = None,
        touch_job: bool = True,
    ) -> bool:
        """Ack the entry and write a dead letter to ``sw:dlq``; False if finished elsewhere.

        ``counted`` None: the request was counted only if a producer registered this entry
        (the job hash names it). With ``touch_job=False`` the job hash and done list are left as they are (an entry
        that does not own its job id must not end that job).

        The dead letter holds: ``job_id``, ``entry_id``, ``model``, ``task``, ``attempts``,
        ``error_type``, ``error``, ``reason`` (``permanent``, ``retries_exhausted``,
        ``malformed``, ``poison`` or ``duplicate_job_id``), ``worker``, ``submitted_ms``, ``first_failure_ms``,
        ``last_failure_ms`` and ``fields`` (msgpack map of the entry's fields, each cut at
        64 KiB; ``truncated`` is 1 when one was cut) to replay it.
        """
        now = now_ms()
        kept: dict[str, bytes] = {}
        truncated = False
        for name, value in fields.items():
            if len(value) > MAX_DEAD_FIELD_BYTES:
                value, truncated = value[:MAX_DEAD_FIELD_BYTES], True
            kept[name] = value
        letter = {
            "job_id": job_id,
            "entry_id": entry_id,
            "model": model,
            "task": task,
            "attempts": str(attempt),
            "error_type": error_type,
            "error": message[:MAX_ERROR_CHARS],
            "reason": reason,
            "worker": worker,
            "submitted_ms": str(submitted_ms or ""),
            "first_failure_ms": str(first_failure_ms or now),
            "last_failure_ms": str(now),
            "fields": msgpack.packb(kept, use_bin_type=True),
            "truncated": "1" if truncated else "0",
        }
        return await self._run_fail(
            entry_id,
            job_id,
            "dead" if touch_job else "stray",
            now,
            worker,
            error_type,
            message,
            attempt,
            "auto" if counted is None else not counted,
            DLQ_MAX_ENTRIES,
            _flatten(letter),
            model,
        )

    async def dead_letter_job(
        self,
        job: Job,
        error_type: str,
        message: str,
        reason: str,
        worker: str,
        *,
        touch_job: bool = True,
    ) -> bool:
        """:meth:`dead_letter` for a decoded job (its fields re-encoded for replay)."""
        # a replay starts over: first attempt, counted once, no failure yet
        first = dataclasses.replace(job, attempt=1, counted=True, first_failure_ms=None)
        return await self.dead_letter(
            entry_id=job.entry_id,
            job_id=job.job_id,
            fields=encode_job(first),
            model=job.model,
            task=job.task,
            attempt=job.attempt,
            error_type=error_type,
            message=message,
            reason=reason,
            worker=worker,
            counted=job.counted,
            submitted_ms=job.submitted_ms,
            first_failure_ms=job.first_failure_ms,
            touch_job=touch_job,
        )

    async def dead_letter_raw(
        self, entry_id: str, fields: dict[str, bytes], error_type: str, message: str, worker: str
    ) -> bool:
        """Dead-letter an entry that could not be decoded (reason ``malformed``)."""

        def text(name: str) -> str:
            return fields.get(name, b"")[:200].decode("utf-8", "replace")

        return await self.dead_letter(
            entry_id=entry_id,
            job_id=job_id_of(entry_id, fields),
            fields=fields,
            model=text("model"),
            task=text("task"),
            attempt=1,
            error_type=error_type,
            message=message,
            reason="malformed",
            worker=worker,
            counted=None,  # its fields cannot be trusted: ask the job hash
        )

    async def _run_fail(
        self,
        entry_id: str,
        job_id: str,
        mode: str,
        now: int,
        worker: str,
        error_type: str,
        message: str,
        attempt: int,
        count_request: bool | str,
        delay_or_cap: int,
        fields: list[Any],
        model: str,
    ) -> bool:
        keys = [
            self.keys.jobs,
            self.keys.stats,
            self.keys.job(job_id),
            self.keys.job_done(job_id),
            self.keys.retries,
            self.keys.retry_job(job_id),
            self.keys.dlq,
        ]
        args: list[Any] = [
            self.group,
            entry_id,
            mode,
            now,
            self.settings.result_ttl_s,
            worker,
            error_type,
            message[:MAX_ERROR_CHARS],
            attempt,
            count_request if isinstance(count_request, str) else ("1" if count_request else "0"),
            delay_or_cap,
            job_id,
            model,
            *fields,
        ]
        return bool(await self._fail(keys=keys, args=args))

    async def move_due_retries(self, limit: int = 100) -> tuple[int, float | None]:
        """Re-add due retries to the stream (judged by the Redis clock).

        Returns:
            ``(moved, seconds until the next retry is due, or None when none waits)``.
        """
        moved, next_due, redis_now = await self._move(
            keys=[self.keys.retries, self.keys.jobs],
            args=[limit, self.keys.retry_job(""), self.keys.job("")],
        )
        if int(next_due) < 0:
            return int(moved), None
        return int(moved), max(0.0, (int(next_due) - int(redis_now)) / 1000)

    async def hand_back(self, job: Job) -> bool:
        """Re-add ``job`` as a fresh entry and ack its old one (shutdown); False if not ours."""
        fields = _flatten(encode_job(job))  # entry id and deliveries are not encoded
        new_id = await self._handback(
            keys=[self.keys.jobs, self.keys.job(job.job_id)],
            args=[self.group, job.entry_id, now_ms(), *fields],
        )
        return bool(new_id)


def _flatten(fields: dict[str, Any]) -> list[Any]:
    flat: list[Any] = []
    for name, value in fields.items():
        flat += [name, value]
    return flat

"""The inference worker's stream consumer: batches, results, retries, recovery, shutdown.

One :class:`JobConsumer` per worker process reads ``sw:jobs`` through the consumer group,
gathers pending jobs of one ``(model, task)`` into a batch (up to ``max_batch_size``,
waiting ``batch_wait_ms`` for more), runs it through the :class:`~workers.jobs.handlers.BatchHandler`
and finalizes each job atomically with its ack (see :class:`~sw_core.pipeline.store.JobStore`):

- a result -> job hash ``done`` + ack, in one Lua call;
- a transient error -> ack + retry scheduled in ``sw:retries`` with exponential backoff,
  re-added to the stream by the retry mover of whichever worker sees it due first;
- a permanent error, the last attempt, a malformed entry, or an entry delivered more than
  ``max_deliveries`` times -> dead letter in ``sw:dlq`` + ack.

Crash recovery: a restarted worker with the same ``worker_name`` first reads its own pending
entries; every worker ``XAUTOCLAIM``\\ s entries idle longer than ``claim_idle_ms``, while it
keeps its own in-flight entries fresh (``XCLAIM ... JUSTID``) so a long job on a live worker
is never taken from it. At shutdown it finishes the batch in flight (within
``shutdown_grace_s``) and hands the entries it did not start back to the stream.

Background tasks only await Redis or the handler: the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Any, TypeVar

from redis.asyncio import Redis

from sw_core.exceptions import JobError, ModelError
from sw_core.ops.resident import RESIDENT_FIELD, encode_resident
from sw_core.pipeline.jobs import Job, decode_entry, decode_fields
from sw_core.pipeline.lifecycle import JobEnds
from sw_core.pipeline.registry import ModelRegistry
from sw_core.pipeline.store import JobStore
from sw_core.retry import RetryPolicy
from sw_core.settings import Settings
from workers.heartbeat import default_worker_name
from workers.jobs.admission import start_batch
from workers.jobs.decode_loop import DecodeLoops
from workers.jobs.handlers import BatchHandler, DecodingHandler, run_batch_bounded
from workers.jobs.outcomes import JobOutcomes
from workers.jobs.retry_mover import RetryMover
from workers.jobs.token_stream import TokenStreams

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Retries of a Redis step that failed on a connection blip (short: the worker lives on).
_REDIS_RETRY = RetryPolicy(attempts=4, initial_delay_s=0.2, multiplier=2.0, max_delay_s=2.0)


class JobConsumer:
    """Consumes the jobs stream for one worker.

    Args:
        redis: asyncio client, ``decode_responses=False``.
        settings: limits, timings and the key prefix.
        handler: runs the batches.
        name: consumer name (default ``settings.worker_name`` or ``<host>-<pid>``).
        registry: where models are looked up (unknown model -> dead letter).
    """

    def __init__(
        self,
        redis: Redis,
        settings: Settings,
        handler: BatchHandler,
        *,
        name: str | None = None,
        registry: ModelRegistry | None = None,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.handler = handler
        self.name = name or settings.worker_name or default_worker_name()
        self.store = JobStore(redis, settings)
        self.retry_mover = RetryMover(self.store, self.name)
        self.registry = registry or ModelRegistry(redis, settings)
        self.outcomes = JobOutcomes(
            redis, self.store, RetryPolicy.from_settings(settings), self.retry_mover, self.name
        )
        self.ends = JobEnds(redis, settings)
        #: Continuous batching of generate jobs (None: every batch runs to its end).
        self.loops: DecodeLoops | None = None
        #: Entries held at once (taken, running or waiting): enough for the next batch.
        self.capacity = 2 * settings.max_batch_size
        if settings.generate_batching == "continuous" and isinstance(handler, DecodingHandler):
            streams = TokenStreams(redis, settings)
            self.loops = DecodeLoops(
                handler, settings, self.outcomes, self.ends, streams, self.release
            )
            self.capacity += settings.max_active_sequences
        self._buffer: list[Job] = []
        self._inflight: dict[str, Job] = {}
        self._held: set[str] = set()
        self._new = asyncio.Event()
        self._room = asyncio.Event()
        self._stopping = False
        self._runner: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._claimer: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Create the group if needed and start the background tasks."""
        await self.store.ensure_group()
        self._reader = asyncio.create_task(self._read_loop(), name=f"{self.name}-read")
        self._runner = asyncio.create_task(self._run_loop(), name=f"{self.name}-run")
        self._refresher = asyncio.create_task(self._refresh_loop(), name=f"{self.name}-refresh")
        self._claimer = asyncio.create_task(self._claim_loop(), name=f"{self.name}-claim")
        self.retry_mover.start()
        log.info("worker %s consuming %s", self.name, self.store.keys.jobs)

    async def stop(self, grace_s: float | None = None) -> int:
        """Stop taking jobs, finish the batch in flight within ``grace_s``
        (``shutdown_grace_s``), hand every entry not finished back to the stream.

        Returns:
            How many entries were handed back.
        """
        grace_s = self.settings.shutdown_grace_s if grace_s is None else grace_s
        self._stopping = True
        for event in (self._new, self._room):
            event.set()
        leftovers: list[Job] = []
        if self._runner is not None:
            done, _ = await asyncio.wait({self._runner}, timeout=grace_s)
            if not done:
                leftovers = list(self._inflight.values())
                log.warning(
                    "worker %s: batch of %d jobs did not finish within %.1f s; handing it back",
                    self.name,
                    len(leftovers),
                    grace_s,
                )
            await _cancel(self._runner)
        if self.loops is not None and not leftovers:
            if not await self.loops.drain(grace_s):
                leftovers = list(self._inflight.values())
                log.warning(
                    "worker %s: generating jobs did not finish in time; handing them back",
                    self.name,
                )
            await self.loops.cancel()
        if self._reader is not None:
            await asyncio.wait({self._reader}, timeout=self.settings.poll_block_ms / 1000 + 2)
            await _cancel(self._reader)
        if self._claimer is not None:
            await _cancel(self._claimer)
        await self.retry_mover.stop()
        handed = 0
        for job in [*leftovers, *self._buffer]:
            try:
                if await self.outcomes.with_retries(
                    functools.partial(self.store.hand_back, job), "hand back"
                ):
                    handed += 1
            except Exception as exc:
                log.error("worker %s could not hand back %s: %s", self.name, job.entry_id, exc)
        self._buffer.clear()
        if self._refresher is not None:
            await _cancel(self._refresher)
        log.info("worker %s stopped; %d entries handed back", self.name, handed)
        return handed

    @property
    def jobs_done(self) -> int:
        """Jobs this consumer finished with a result."""
        return self.outcomes.jobs_done

    @property
    def jobs_failed(self) -> int:
        """Failed attempts of this consumer (retried or dead-lettered)."""
        return self.outcomes.jobs_failed

    def report(self) -> dict[str, str | int]:
        """What this consumer is doing, for the heartbeat hash."""
        current = list(self._inflight.values())
        fields: dict[str, str | int] = {
            "current_model": current[0].model if current else "",
            "current_jobs": ",".join(j.job_id for j in current)[:512],
            "jobs_done": self.jobs_done,
            "jobs_failed": self.jobs_failed,
            "held": len(self._held),
        }
        resident = getattr(self.handler, "resident_chunks", None)
        if resident is not None:  # the engines' chunks in memory, for the gateway's chunk map
            fields[RESIDENT_FIELD] = encode_resident(resident())
        return fields

    # ------------------------------------------------------------------ intake
    async def _read_loop(self) -> None:
        cursor: str | None = "0"  # own pending entries from an earlier life first
        while not self._stopping:
            room = self.capacity - len(self._held)
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                if cursor is not None:
                    entries = await self.store.read(self.name, cursor, room, None)
                    if not entries:
                        cursor = None
                        continue
                    cursor = entries[-1][0]
                    log.info("worker %s resumes %d own pending entries", self.name, len(entries))
                else:
                    block_ms = max(1, self.settings.poll_block_ms)  # 0 would block forever
                    entries = await self.store.read(self.name, ">", room, block_ms)
                await self._intake(entries)
            except Exception as exc:
                log.warning(
                    "worker %s: reading %s failed: %s", self.name, self.store.keys.jobs, exc
                )
                await asyncio.sleep(0.5)

    async def _intake(
        self, entries: list[tuple[str, dict[bytes, bytes] | None]], *, first: bool = False
    ) -> None:
        """Decode entries into the buffer (at its front with ``first``); dead-letter bad ones."""
        added: list[Job] = []
        for entry_id, fields in entries:
            if entry_id in self._held:
                continue
            if fields is None:
                await self.store.ack_missing(entry_id)
                continue
            raw = decode_fields(fields)
            try:
                job = decode_entry(entry_id, raw, self.settings)
            except Exception as exc:  # a decoder bug must not leave the entry pending forever
                if not isinstance(exc, JobError):
                    log.exception("worker %s: decoding entry %s failed", self.name, entry_id)
                log.warning("worker %s: entry %s dead-lettered: %s", self.name, entry_id, exc)
                self.outcomes.jobs_failed += 1
                why = (type(exc).__name__, str(exc), self.name)
                await self.outcomes.with_retries(
                    functools.partial(self.store.dead_letter_raw, entry_id, raw, *why),
                    "dead-letter a malformed entry",
                )
                continue
            added.append(job)
            self._held.add(entry_id)
        if added:
            self._buffer = [*added, *self._buffer] if first else [*self._buffer, *added]
            self._new.set()

    async def _claim_loop(self) -> None:
        cursor = "0-0"
        # a dead worker's entries are taken at most ~1 s after they pass claim_idle_ms
        interval_s = min(max(self.settings.claim_idle_ms / 4000, 0.05), 1.0)
        while not self._stopping:
            await asyncio.sleep(interval_s)
            # Entries of a dead worker are older than anything new: claim them even when the
            # buffer is full (up to twice the usual hold) and run them first.
            room = 2 * self.capacity - len(self._held)
            if room <= 0 or self._stopping:
                continue
            try:
                cursor, entries = await self.store.autoclaim(self.name, cursor, room)
                if entries:
                    log.warning(
                        "worker %s claimed %d entries idle over %d ms (a worker died?)",
                        self.name,
                        len(entries),
                        self.settings.claim_idle_ms,
                    )
                    await self._intake(entries, first=True)
            except Exception as exc:
                log.warning("worker %s: XAUTOCLAIM failed: %s", self.name, exc)

    async def _refresh_loop(self) -> None:
        interval_s = max(self.settings.claim_idle_ms / 3000, 0.05)
        while True:
            await asyncio.sleep(interval_s)
            try:
                lost = set(await self.store.refresh(list(self._held), self.name))
            except Exception as exc:
                log.warning("worker %s: refreshing claims failed: %s", self.name, exc)
                continue
            if lost:
                log.warning("worker %s lost %d entries to other workers", self.name, len(lost))
                self._buffer = [j for j in self._buffer if j.entry_id not in lost]
                self._held -= lost - set(self._inflight)
                self._room.set()

    # ------------------------------------------------------------------ batches
    async def _run_loop(self) -> None:
        while not self._stopping:
            if not self._buffer:
                self._new.clear()
                await self._new.wait()
                continue
            batch = await self._gather_batch()
            if batch:
                try:
                    await self._run_batch(batch)
                except Exception:  # a bug here must not stop the worker
                    log.exception("worker %s: batch failed unexpectedly", self.name)
                    await asyncio.sleep(0.5)

    async def _gather_batch(self) -> list[Job]:
        """The oldest buffered job and more of its (model, task), waiting briefly for more."""
        loop = asyncio.get_running_loop()
        head = self._buffer[0]
        key = (head.model, head.task)
        limit = self.settings.max_batch_size
        if self.loops is not None and head.task == "generate" and head.model in self.loops.loops:
            limit = min(limit, self.loops.room(head.model))
            if limit <= 0:  # the decode loop is full: wait for a job to leave it
                self._room.clear()
                await self._room.wait()
                return []
        deadline = loop.time() + self.settings.batch_wait_ms / 1000
        while True:
            same = [j for j in self._buffer if (j.model, j.task) == key]
            remaining = deadline - loop.time()
            full = len(same) >= limit or len(self._held) >= self.capacity
            if full or self._stopping or remaining <= 0:
                break
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), remaining)
            except TimeoutError:
                pass
        batch = same[:limit]
        taken = {j.entry_id for j in batch}
        self._buffer = [j for j in self._buffer if j.entry_id not in taken]
        for job in batch:
            self._inflight[job.entry_id] = job
        return batch

    async def _run_batch(self, batch: list[Job]) -> None:
        model, task = batch[0].model, batch[0].task
        handed: set[str] = set()  # entries a decode loop now finishes
        try:
            try:
                await self.registry.resolve(model)
            except ModelError as exc:
                for job in batch:
                    await self.outcomes.failed(job, exc)
                return
            runnable = await start_batch(
                batch,
                store=self.store,
                ends=self.ends,
                outcomes=self.outcomes,
                settings=self.settings,
                name=self.name,
            )
            loops = self.loops if runnable and task == "generate" else None
            if loops is not None and await self._loop_takes(model):
                loops.add(model, runnable)
                handed = {job.entry_id for job in runnable}
            elif runnable:
                started_s = asyncio.get_running_loop().time()
                results = await run_batch_bounded(
                    self.handler,
                    model,
                    task,
                    runnable,
                    batch_timeout_s=self.settings.batch_timeout_s,
                    worker=self.name,
                )
                duration_s = asyncio.get_running_loop().time() - started_s
                await self.outcomes.finish(runnable, results, duration_s=duration_s)
        finally:
            for job in batch:
                if job.entry_id not in handed:
                    self.release(job)

    async def _loop_takes(self, model: str) -> bool:
        """Whether a decode loop runs ``model``'s generate jobs (if the model cannot be
        opened, the batch path records the failure)."""
        try:
            return self.loops is not None and await self.loops.accepts(model)
        except Exception as exc:
            log.warning("worker %s: no decode loop for %s: %s", self.name, model, exc)
            return False

    def release(self, job: Job) -> None:
        """Forget a job this consumer is done with (its entry was acked or handed on)."""
        self._inflight.pop(job.entry_id, None)
        self._held.discard(job.entry_id)
        self._room.set()


async def _cancel(task: asyncio.Task[Any]) -> None:
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task

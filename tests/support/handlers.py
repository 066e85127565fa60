"""Batch handlers that worker processes load by dotted path, e.g.
``SW_HANDLER=tests.support.handlers:SlowHandler``; each is built with the worker's Settings.

Pipeline handlers (no chunks): :class:`EchoHandler`, :class:`RecordingEchoHandler`,
:class:`SlowHandler`, :class:`FlakyHandler`, :class:`AlwaysTransientHandler`,
:class:`BrokenHandler`. Per-job behaviour comes from ``key=value`` words in the job's first
input (``"sleep=1.5"``, ``"fail=2"``) or from ``PIPELINE_*`` environment variables.

Handlers that read chunks through the worker's real chunk path
(:class:`~workers.chunks.chunk_source.RemoteChunkSource`: shared Redis chunk cache, loader workers,
storage with failover and sha256 checks): :class:`ChunkReadingHandler` (operations tests)
and :class:`ChunkHandler` (chaos suite). :class:`SmallEcho` answers at once (input fuzzing).
The real engine, recorded, is :class:`tests.support.engine_handler.RecordingInference`.

Handlers that record write JSON lines (event, job id, attempt, pid, time) to the Redis list
:func:`~tests.support.observe.calls_key`, so tests can count executions across processes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from typing import Any

from sw_core.chunks.manifest import MANIFEST_FILE, Manifest
from sw_core.exceptions import StorageError, WeightServerError, error_class
from sw_core.pipeline.jobs import Job
from sw_core.queue_redis import queue_redis
from sw_core.settings import Settings
from tests.support.observe import calls_key
from workers.chunks.chunk_source import RemoteChunkSource


class Recorder:
    """Appends one JSON line per job to :func:`~tests.support.observe.calls_key`.
    ``best_effort`` swallows Redis errors (a chaos scenario may have taken Redis away);
    otherwise they fail the batch."""

    def __init__(self, settings: Settings, *, best_effort: bool = False) -> None:
        self.redis = queue_redis(settings)  # through Sentinel when configured
        self.key = calls_key(settings.key_prefix)
        self.best_effort = best_effort

    async def record(self, event: str, jobs: list[Job], **extra: Any) -> None:
        now = time.time()
        lines = [
            json.dumps(
                {
                    "event": event,
                    "job_id": j.job_id,
                    "attempt": j.attempt,
                    "model": j.model,
                    "task": j.task,
                    "pid": os.getpid(),
                    "t": now,
                    "batch": len(jobs),
                    **extra,
                }
            )
            for j in jobs
        ]
        if not lines:
            return
        try:
            await self.redis.rpush(self.key, *lines)
        except Exception:
            if not self.best_effort:
                raise

    async def close(self) -> None:
        await self.redis.aclose()


def directives(job: Job) -> dict[str, str]:
    """``key=value`` words of the job's first input."""
    first = job.inputs[0] if job.inputs and isinstance(job.inputs[0], str) else ""
    return dict(word.split("=", 1) for word in first.split() if "=" in word)


def echo(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "inputs": job.inputs,
        "params": job.params,
        "attempt": job.attempt,
    }


# ---------------------------------------------------------------------------- pipeline
class EchoHandler:
    """Returns each job's inputs at once; records nothing (fast, for throughput)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def run_batch(self, model: str, task: str, jobs: list[Job]) -> list[Any]:
        return [echo(job) for job in jobs]


class _Recording:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.recorder = Recorder(settings)
        self.redis = self.recorder.redis
        self.key = self.recorder.key

    async def record(self, event: str, jobs: list[Job], **extra: Any) -> None:
        await self.recorder.record(event, jobs, **extra)

    async def close(self) -> None:
        await self.recorder.close()


class RecordingEchoHandler(_Recording):
    """Echo, recording every execution."""

    async def run_batch(self, model: str, task: str, jobs: list[Job]) -> list[Any]:
        await self.record("run", jobs)
        return [echo(job) for job in jobs]


class SlowHandler(_Recording):
    """Sleeps in a thread (blocking work off the loop): the longest ``sleep=S`` of the batch,
    else ``PIPELINE_SLOW_S`` (1.0 s). Records ``start`` and ``end``."""

    async def run_batch(self, model: str, task: str, jobs: list[Job]) -> list[Any]:
        default_s = float(os.environ.get("PIPELINE_SLOW_S", "1.0"))
        sleep_s = max(float(directives(j).get("sleep", default_s)) for j in jobs)
        await self.record("start", jobs)
        await asyncio.to_thread(time.sleep, sleep_s)
        await self.record("end", jobs)
        return [echo(job) for job in jobs]


class FlakyHandler(_Recording):
    """Fails each job transiently ``fail=N`` times (``PIPELINE_FLAKY_FAILS``, 2), then echoes.
    The count lives in Redis, so it holds across workers."""

    async def run_batch(self, model: str, task: str, jobs: list[Job]) -> list[Any]:
        default = int(os.environ.get("PIPELINE_FLAKY_FAILS", "2"))
        await self.record("run", jobs)
        out: list[Any] = []
        for job in jobs:
            tries = await self.redis.incr(f"{self.key}:flaky:{job.job_id}")
            if tries <= int(directives(job).get("fail", default)):
                out.append(WeightServerError(f"simulated blip {tries} of job {job.job_id}"))
            else:
                out.append(echo(job))
        return out


class AlwaysTransientHandler(_Recording):
    """Every attempt fails with a transient StorageError."""

    async def run_batch(self, model: str, task: str, jobs: list[Job]) -> list[Any]:
        await self.record("run", jobs)
        return [StorageError(f"simulated outage on attempt {j.attempt}") for j in jobs]


class BrokenHandler:
    """Raises a plain ValueError for the whole batch (a bug: permanent)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def run_batch(self, model: str, task: str, jobs: list[Job]) -> list[Any]:
        raise ValueError("handler bug")


# ---------------------------------------------------------------------------- chunk reading
def injected_failure(job: Job) -> str | None:
    """The ``fail=<ErrorType>`` word of the job's first input, if any."""
    return directives(job).get("fail") or None


class ChunkReadingHandler:
    """Reads every chunk of the batch's model through the worker's real chunk path, so a
    storage outage fails jobs through the same code path as in production. A job whose
    first input holds ``fail=<ErrorType>`` fails with that error type (for tests that need
    error counts without an outage)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def run_batch(self, model: str, task: str, jobs: list[Job]) -> list[Any]:
        source = RemoteChunkSource(model, self.settings)
        try:
            manifest = Manifest.from_json(await source.fetch_file(MANIFEST_FILE))
            total_bytes = 0
            for chunk in manifest.chunks:
                total_bytes += len(await source.fetch(chunk))
        finally:
            await source.close()
        out: list[Any] = []
        for job in jobs:
            failure = injected_failure(job)
            if failure:
                out.append(error_class(failure)(f"injected {failure} for job {job.job_id}"))
            else:
                out.append({"chunks": len(manifest.chunks), "bytes": total_bytes})
        return out


class ChunkHandler:
    """Fetches every chunk of the job's model per batch (the manifest once); returns a
    digest per job. Records ``start``/``end``/``fail`` (best effort).
    ``CHAOS_HANDLER_SLEEP_S`` adds a pause (off the event loop) per batch so kills find
    jobs in flight."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.recorder = Recorder(settings, best_effort=True)
        self.sleep_s = float(os.environ.get("CHAOS_HANDLER_SLEEP_S", "0"))
        self._sources: dict[str, RemoteChunkSource] = {}
        self._manifests: dict[str, Manifest] = {}

    def _source(self, model: str) -> RemoteChunkSource:
        if model not in self._sources:
            self._sources[model] = RemoteChunkSource(model, self.settings)
        return self._sources[model]

    async def _manifest(self, model: str) -> Manifest:
        if model not in self._manifests:
            raw = await self._source(model).fetch_file(MANIFEST_FILE)
            self._manifests[model] = Manifest.from_json(raw)
        return self._manifests[model]

    async def run_batch(self, model: str, task: str, jobs: list[Job]) -> list[Any]:
        await self.recorder.record("start", jobs)
        try:
            manifest = await self._manifest(model)
            digest = hashlib.sha256()
            total_bytes = 0
            source = self._source(model)
            for chunk in manifest.chunks:
                data = await source.fetch(chunk)
                total_bytes += len(data)
                digest.update(chunk.sha256.encode())
            if self.sleep_s:
                await asyncio.to_thread(time.sleep, self.sleep_s)
        except Exception as exc:
            await self.recorder.record("fail", jobs, error=f"{type(exc).__name__}: {exc}"[:300])
            return [exc] * len(jobs)
        await self.recorder.record("end", jobs)
        return [
            {"job_id": j.job_id, "bytes": total_bytes, "digest": digest.hexdigest()} for j in jobs
        ]

    async def close(self) -> None:
        for source in self._sources.values():
            await source.close()
        await self.recorder.close()


class SmallEcho:
    """Answers each job at once with a small result (no chunks): for input fuzzing."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def run_batch(self, model: str, task: str, jobs: list[Job]) -> list[Any]:
        return [{"job_id": j.job_id, "n_inputs": len(j.inputs)} for j in jobs]

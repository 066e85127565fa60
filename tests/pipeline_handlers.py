"""Batch handlers for pipeline tests (``SW_HANDLER=tests.pipeline_handlers:SlowHandler``).

Each is built with the worker's Settings. Per-job behaviour comes from ``key=value`` words in
the job's first input (``"sleep=1.5"``, ``"fail=2"``) or from ``PIPELINE_*`` environment
variables. Handlers that record write JSON lines to the Redis list ``<prefix>:test:calls``
(job id, attempt, pid, event, time), so tests can count executions across processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import redis.asyncio as aioredis

from sw_core.exceptions import StorageError, WeightServerError
from sw_core.pipeline.jobs import Job
from sw_core.settings import Settings


def calls_key(settings: Settings) -> str:
    """Redis list the recording handlers append to."""
    return f"{settings.key_prefix}:test:calls"


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


class EchoHandler:
    """Returns each job's inputs at once; records nothing (fast, for throughput)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def run_batch(self, model: str, task: str, jobs: list[Job]) -> list[Any]:
        return [echo(job) for job in jobs]


class _Recording:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = aioredis.Redis.from_url(settings.redis_url)
        self.key = calls_key(settings)

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
        if lines:
            await self.redis.rpush(self.key, *lines)

    async def close(self) -> None:
        await self.redis.aclose()


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

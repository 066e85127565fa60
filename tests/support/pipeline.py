"""In-process pipeline pieces for tests: job consumers, a loader worker, a job builder."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from arq.worker import Worker

from sw_core.pipeline.jobs import Job
from sw_core.settings import Settings
from tests.support.waiting import wait_until
from workers.chunks.loader import ChunkLoader
from workers.jobs.consumer import JobConsumer
from workers.node import worker_options


@contextlib.asynccontextmanager
async def consumers(
    settings: Settings, handlers: list[Any], names: list[str] | None = None
) -> AsyncIterator[list[JobConsumer]]:
    """Run one in-process consumer per handler; stop them (with hand-back) at the end."""
    clients = [aioredis.Redis.from_url(settings.redis_url) for _ in handlers]
    names = names or [f"w{i}" for i in range(len(handlers))]
    started = [
        JobConsumer(client, settings, handler, name=name)
        for client, handler, name in zip(clients, handlers, names, strict=True)
    ]
    for consumer in started:
        await consumer.start()
    try:
        yield started
    finally:
        for consumer in started:
            await consumer.stop(grace_s=5)
        for client in clients:
            await client.aclose()
        for handler in handlers:
            close = getattr(handler, "close", None)
            if close is not None:
                await close()


async def crash(consumer: JobConsumer) -> None:
    """Stop a consumer's tasks abruptly, as a dead process would: nothing handed back."""
    tasks = [consumer._reader, consumer._runner, consumer._refresher, consumer._claimer]
    for task in tasks:
        if task is not None:
            task.cancel()
    for task in tasks:
        if task is not None:
            with contextlib.suppress(BaseException):
                await task
    await consumer.retry_mover.stop()
    consumer._runner = consumer._reader = consumer._refresher = consumer._claimer = None
    consumer._buffer.clear()


def job(job_id: str = "j", model: str = "m1", task: str = "embed", **kw: Any) -> Job:
    return Job(job_id=job_id, model=model, task=task, inputs=kw.pop("inputs", ["x"]), **kw)


@contextlib.asynccontextmanager
async def loader_worker(
    settings: Settings, start_timeout_s: float = 10, idle_timeout_s: float = 10
) -> AsyncIterator[ChunkLoader]:
    """A real arq Worker (loader-only options) running in this process; yields its loader.

    At the end it waits for the jobs in flight to finish before closing: arq's ``close()``
    cancels unfinished jobs, and a cancelled job makes ``close()`` raise ``CancelledError``.
    """
    worker = Worker(**worker_options(settings, inference=False), handle_signals=False)
    task = asyncio.create_task(worker.async_run())
    try:
        await wait_until(lambda: "loader" in worker.ctx, start_timeout_s, "the loader to start")
        yield worker.ctx["loader"]
    finally:
        await wait_until(
            lambda: all(t.done() for t in worker.tasks.values()),
            idle_timeout_s,
            "the loader's jobs to finish",
        )
        await worker.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

"""Helpers for the pipeline tests: settings, in-process consumers, worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from sw_core.keys import Keys
from sw_core.pipeline.jobs import Job
from sw_core.settings import Settings
from tests.pipeline_handlers import calls_key
from tests.worker_processes import REPO as REPO
from tests.worker_processes import start_worker as start_worker
from tests.worker_processes import stop_worker as stop_worker
from tests.worker_processes import worker_env as worker_env
from workers.consumer import JobConsumer

KEYS = Keys("sw")


def pipeline_settings(redis_url: str, **overrides: Any) -> Settings:
    """Settings for fast tests: short claims, polls and retry delays (no ``SW_*`` from env)."""
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "models": "m1=/srv/m1,m2=/srv/m2",
        "claim_idle_ms": 1000,
        "poll_block_ms": 100,
        "batch_wait_ms": 5,
        "retry_initial_delay_s": 0.2,
        "retry_jitter": 0.1,
        "heartbeat_interval_s": 0.2,
        "heartbeat_ttl_s": 2,
        "shutdown_grace_s": 5,
    }
    values.update(overrides)
    return Settings.from_env({}, **values)


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


async def wait_for(
    check: Callable[[], Awaitable[bool]], timeout_s: float, what: str, every_s: float = 0.05
) -> float:
    """Poll ``check`` until true; returns the seconds it took. Fails after ``timeout_s``."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(every_s)
    return time.monotonic() - start


async def stats(redis: aioredis.Redis) -> dict[str, int]:
    raw = await redis.hgetall(KEYS.stats)
    return {k.decode(): int(v) for k, v in raw.items()}


async def calls(redis: aioredis.Redis, settings: Settings) -> list[dict[str, Any]]:
    """What the recording handlers wrote, in order."""
    return [json.loads(line) for line in await redis.lrange(calls_key(settings), 0, -1)]


async def pending_count(redis: aioredis.Redis, consumer: str | None = None) -> int:
    summary = await redis.xpending(KEYS.jobs, KEYS.jobs_group)
    if consumer is None:
        return int(summary["pending"])
    for item in summary["consumers"]:
        name = item["name"].decode() if isinstance(item["name"], bytes) else item["name"]
        if name == consumer:
            return int(item["pending"])
    return 0


async def dead_letters(redis: aioredis.Redis) -> list[dict[str, str]]:
    entries = await redis.xrange(KEYS.dlq)
    return [
        {k.decode(): v.decode("utf-8", "replace") for k, v in fields.items() if k != b"fields"}
        for _, fields in entries
    ]


def job(job_id: str = "j", model: str = "m1", task: str = "embed", **kw: Any) -> Job:
    return Job(job_id=job_id, model=model, task=task, inputs=kw.pop("inputs", ["x"]), **kw)

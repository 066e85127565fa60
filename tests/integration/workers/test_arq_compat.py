"""arq workers adapted by ``workers.arq_compat`` against a real Redis that fails them: out
of memory (every command of a ``MULTI`` refused, and arq's bookkeeping is all
transactions), and a connection lost while a job is being started."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.worker import Worker, func
from redis.exceptions import ConnectionError as RedisConnectionError

from sw_core.local.redis_server import RedisServer
from tests.support.waiting import wait_until
from workers.arq_compat import tolerate_redis_outages

MIB = 1 << 20


async def _echo(ctx: dict[str, Any], value: str) -> str:
    ctx["ran"].append(value)  # the worker's list: arq hands each job a copy of its ctx
    return value


@pytest.fixture(autouse=True)
def _adapted() -> None:
    tolerate_redis_outages()  # what building workers.Settings does in a worker process


@pytest.fixture
async def client(private_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.Redis.from_url(private_redis.url)
    yield redis
    await redis.config_set("maxmemory", 64 * MIB)
    await redis.aclose()


def _worker(server: RedisServer, **options: Any) -> Worker:
    return Worker(
        functions=[func(_echo, name="echo")],
        redis_settings=RedisSettings.from_dsn(server.url),
        handle_signals=False,
        poll_delay=0.01,
        keep_result=0,
        ctx={"ran": []},
        **options,
    )


@contextlib.asynccontextmanager
async def _running(worker: Worker) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(worker.async_run())
    try:
        await wait_until(lambda: worker._pool is not None or task.done(), 10, "arq's pool")
        yield task
        # arq's close() cancels the jobs still running, and a cancelled job makes it raise
        await wait_until(lambda: all(t.done() for t in worker.tasks.values()), 10, "the jobs")
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        await worker.close()


async def _enqueue(server: RedisServer, *values: str) -> None:
    pool = await create_pool(RedisSettings.from_dsn(server.url))
    try:
        for value in values:
            await pool.enqueue_job("echo", value)
    finally:
        await pool.aclose()


async def test_a_worker_loop_step_refused_by_redis_out_of_memory_is_survived(
    private_redis: RedisServer, client: aioredis.Redis
) -> None:
    # health_check_interval=0: every loop step ends with arq's PSETEX, refused under OOM
    worker = _worker(private_redis, health_check_interval=0)
    async with _running(worker) as loop:
        await client.config_set("maxmemory", 1)
        await asyncio.sleep(1.5)  # three refused steps at least (each pauses 0.5 s)
        assert not loop.done(), loop
        await client.config_set("maxmemory", 64 * MIB)
        await _enqueue(private_redis, "after the outage")
        await wait_until(lambda: worker.ctx["ran"], 10, "a job run after the outage")
        assert not loop.done()
    assert worker.ctx["ran"] == ["after the outage"]


async def test_a_connection_lost_while_starting_a_job_gives_its_slot_back(
    private_redis: RedisServer,
) -> None:
    """arq counts the job it starts (``job_counter``, a semaphore slot) before its Redis
    transaction; an error there left the slot taken for good. With ``max_jobs=1`` a single
    one made the worker poll on without ever starting a job again."""
    pool = await create_pool(RedisSettings.from_dsn(private_redis.url))
    failures = _fail_watch(pool, times=3)
    worker = _worker(private_redis, redis_pool=pool, max_jobs=1)
    await _enqueue(private_redis, "one", "two")
    async with _running(worker) as loop:
        await wait_until(lambda: len(worker.ctx["ran"]) == 2, 10, "both jobs to run")
        assert not loop.done()
    assert sorted(worker.ctx["ran"]) == ["one", "two"] and failures() == 0
    assert worker.job_counter == 0


async def test_a_job_whose_bookkeeping_redis_refuses_lets_the_worker_close_cleanly(
    private_redis: RedisServer, client: aioredis.Redis
) -> None:
    """arq's ``close()`` gathers the job tasks before ``on_shutdown`` (where a node drains
    its consumer): a task failed by a Redis error in ``finish_job`` made it raise instead."""
    shutdowns: list[bool] = []

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        shutdowns.append(True)

    async def fill_redis_then_stop(ctx: dict[str, Any]) -> str:
        await ctx["redis"].config_set("maxmemory", 1)  # finish_job's MULTI is refused
        assert worker.main_task is not None
        worker.main_task.cancel()  # shut down now: the failed task is not reaped by the loop
        return "done"

    worker = Worker(
        functions=[func(fill_redis_then_stop, name="stop")],
        redis_settings=RedisSettings.from_dsn(private_redis.url),
        handle_signals=False,
        poll_delay=0.01,
        keep_result=0,
        on_shutdown=on_shutdown,
    )
    pool = await create_pool(RedisSettings.from_dsn(private_redis.url))
    await pool.enqueue_job("stop")
    await pool.aclose()
    task = asyncio.create_task(worker.async_run())
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    await wait_until(lambda: all(t.done() for t in worker.tasks.values()), 10, "the job task")
    assert worker.tasks, "the job task was reaped: the test did not reach close() with it"
    await client.config_set("maxmemory", 64 * MIB)
    await worker.close()
    assert shutdowns == [True]


def _fail_watch(pool: ArqRedis, *, times: int) -> Callable[[], int]:
    """Make the first ``times`` WATCHes of ``pool``'s transactions (arq's job start) fail
    as a dropped connection does; returns how many failures are left."""
    left = [times]
    make_pipeline = pool.pipeline

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = make_pipeline(*args, **kwargs)
        watch = pipe.watch

        async def failing_watch(*names: Any) -> Any:
            if left[0] > 0:
                left[0] -= 1
                raise RedisConnectionError("injected: connection lost while starting a job")
            return await watch(*names)

        pipe.watch = failing_watch  # type: ignore[method-assign]
        return pipe

    pool.pipeline = pipeline  # type: ignore[method-assign]
    return lambda: left[0]

"""Starting a batch when Redis refuses to mark its jobs running (real Redis out of memory).

Under ``maxmemory`` with ``noeviction`` Redis refuses every command that may grow memory
(``HSET`` in ``pipeline_start.lua``, so the start of a job), yet still serves reads and the
claim commands (``XREADGROUP``, ``XAUTOCLAIM``, ``XACK``). A start it refuses must end the
attempt with that refusal as its error: left pending, the entry was claimed again and again,
each claim a delivery, until it was dead-lettered as ``JobError`` / ``poison`` ("workers
probably crashed") -- a job that never ran, with a cause that was not its own (what ``make
chaos`` once met in ``tests/chaos/test_memory_pressure.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from producer import Producer
from sw_core.local.redis_server import RedisServer
from sw_core.pipeline.store import JobStore
from sw_core.settings import Settings
from tests.support.handlers import RecordingEchoHandler
from tests.support.observe import KEYS, dead_letters, pending_count, recorded_events
from tests.support.pipeline import consumers
from tests.support.settings import fast_settings
from tests.support.waiting import wait_until

MIB = 1 << 20


@pytest.fixture
async def oom_redis(
    private_redis: RedisServer,
) -> AsyncIterator[tuple[RedisServer, aioredis.Redis]]:
    client = aioredis.Redis.from_url(private_redis.url)
    yield private_redis, client
    await client.aclose()


async def _queued_then_out_of_memory(client: aioredis.Redis, settings: Settings) -> str:
    """Submit one job, then make Redis refuse every write that may grow memory."""
    async with Producer(settings=settings) as producer:
        job_id = await producer.submit("m1", "embed", ["never marked running"])
    await JobStore(client, settings).ensure_group()
    await client.config_set("maxmemory", 1)  # far over it: every denyoom command is refused
    return job_id


async def test_a_start_refused_for_lack_of_memory_dead_letters_with_that_cause(
    oom_redis: tuple[RedisServer, aioredis.Redis],
) -> None:
    server, client = oom_redis
    # a few fast reclaims would make the entry poison, were refused starts left pending
    settings = fast_settings(server.url, max_deliveries=2, claim_idle_ms=200, retry_attempts=1)
    job_id = await _queued_then_out_of_memory(client, settings)
    handler = RecordingEchoHandler(fast_settings(server.url))
    try:
        async with consumers(settings, [handler]):
            await wait_until(lambda: _letters(client), 10, "the job's dead letter")
            entry = await client.xrange(KEYS.jobs)
            pending = await pending_count(client)
    finally:
        await client.config_set("maxmemory", 64 * MIB)
    (letter,) = await dead_letters(client)
    assert (letter["job_id"], letter["reason"]) == (job_id, "retries_exhausted"), letter
    assert letter["error_type"] == "CacheError", letter
    assert "out of memory" in letter["error"] and "running" in letter["error"], letter
    assert letter["attempts"] == "1"
    assert entry == [] and pending == 0  # acked and deleted with its letter
    job = await client.hgetall(KEYS.job(job_id))
    assert job[b"status"] == b"dead" and job[b"error_type"] == b"CacheError"
    assert await recorded_events(client, settings) == []  # it never ran


async def test_a_start_refused_for_lack_of_memory_is_retried_once_redis_has_room(
    oom_redis: tuple[RedisServer, aioredis.Redis],
) -> None:
    server, client = oom_redis
    settings = fast_settings(
        server.url, max_deliveries=2, claim_idle_ms=200, retry_attempts=3, retry_jitter=0
    )
    job_id = await _queued_then_out_of_memory(client, settings)
    async with (
        consumers(settings, [RecordingEchoHandler(settings)]),
        Producer(settings=settings) as producer,
    ):
        try:
            await wait_until(
                lambda: _status(client, job_id, b"retrying"), 10, "the refused start recorded"
            )
            job = await client.hgetall(KEYS.job(job_id))
            assert job[b"error_type"] == b"CacheError", job
            assert b"out of memory" in job[b"error"], job
        finally:
            await client.config_set("maxmemory", 64 * MIB)
        result = await producer.result(job_id, timeout=20)
    assert result["inputs"] == ["never marked running"]
    assert await dead_letters(client) == []
    assert [e["job_id"] for e in await recorded_events(client, settings)] == [job_id]


async def _letters(client: aioredis.Redis, count: int = 1) -> bool:
    return await client.xlen(KEYS.dlq) >= count


async def _status(client: aioredis.Redis, job_id: str, status: bytes) -> bool:
    return await client.hget(KEYS.job(job_id), "status") == status


async def test_out_of_memory_leaves_an_entry_that_reuses_a_job_id_to_the_duplicate_check(
    oom_redis: tuple[RedisServer, aioredis.Redis],
) -> None:
    """Who owns a job is decided in the same script that finds Redis out of memory: a copy
    of a job's entry is dead-lettered as a duplicate, never retried as that job."""
    server, client = oom_redis
    settings = fast_settings(server.url, retry_attempts=1)
    async with Producer(settings=settings) as producer:
        job_id = await producer.submit("m1", "embed", ["owned by its first entry"])
    ((_, fields),) = await client.xrange(KEYS.jobs)
    await client.xadd(KEYS.jobs, fields)  # the same job id in a second entry
    await JobStore(client, settings).ensure_group()
    await client.config_set("maxmemory", 1)
    try:
        async with consumers(settings, [RecordingEchoHandler(fast_settings(server.url))]):
            await wait_until(lambda: _letters(client, 2), 10, "two dead letters")
    finally:
        await client.config_set("maxmemory", 64 * MIB)
    letters = {(x["error_type"], x["reason"]) for x in await dead_letters(client)}
    assert letters == {("CacheError", "retries_exhausted"), ("JobError", "duplicate_job_id")}
    assert await client.hget(KEYS.job(job_id), "error_type") == b"CacheError"
    assert await pending_count(client) == 0

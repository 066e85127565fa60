"""Crash recovery and shutdown: claims, reclaims, hand-back (in process, real Redis)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError

from producer import Producer
from sw_core.counters import COMPLETED, ERRORS, FAILED, TOTAL_REQUESTS
from sw_core.local.redis_server import RedisServer
from sw_core.pipeline.store import JobStore
from tests.support.handlers import EchoHandler, RecordingEchoHandler, SlowHandler
from tests.support.observe import KEYS, pending_count, read_stats, recorded_events
from tests.support.pipeline import consumers, crash
from tests.support.settings import fast_settings
from tests.support.waiting import wait_until


async def _delivery_counts(redis) -> list[int]:
    rows = await redis.xpending_range(KEYS.jobs, KEYS.jobs_group, "-", "+", 100)
    return [int(r["times_delivered"]) for r in rows]


async def test_long_job_on_a_live_worker_is_not_redelivered(redis_url: str, redis_client) -> None:
    settings = fast_settings(redis_url, claim_idle_ms=500)
    handlers = [SlowHandler(settings), SlowHandler(settings)]
    async with consumers(settings, handlers), Producer(settings=settings) as p:
        job_id = await p.submit("m1", "embed", ["sleep=2.0"])  # 4x claim_idle_ms
        await wait_until(lambda: _status(p, job_id, "running"), 5, "the job to start")
        await asyncio.sleep(1.2)
        assert await _delivery_counts(redis_client) == [1]  # claim kept: no redelivery
        assert (await p.result(job_id, timeout_s=10))["attempt"] == 1
    starts = [c for c in await recorded_events(redis_client, settings) if c["event"] == "start"]
    assert len(starts) == 1
    assert (await read_stats(redis_client))[COMPLETED] == 1


async def test_crashed_workers_entries_are_reclaimed_within_claim_idle(
    redis_url: str, redis_client
) -> None:
    settings = fast_settings(redis_url, claim_idle_ms=800, max_batch_size=2)
    slow = SlowHandler(settings)
    async with Producer(settings=settings) as p:
        ids = [await p.submit("m1", "embed", ["sleep=0.4"]) for _ in range(6)]
        async with consumers(settings, [slow], names=["doomed"]) as (doomed,):
            await wait_until(lambda: _any_running(p, ids), 5, "a batch to start")
            await crash(doomed)
            held = await pending_count(redis_client, "doomed")
            assert held > 0
            crashed_at = time.monotonic()
            async with consumers(settings, [RecordingEchoHandler(settings)], names=["rescuer"]):
                took = await wait_until(
                    lambda: _pending_is(redis_client, "doomed", 0), 5, "the reclaim"
                )
                results = await asyncio.gather(*(p.result(j, timeout_s=10) for j in ids))
    assert took <= 0.8 + 2, took
    assert time.monotonic() - crashed_at < 10
    assert sorted(r["job_id"] for r in results) == sorted(ids)
    counts = await read_stats(redis_client)
    assert counts[COMPLETED] == 6 and counts[TOTAL_REQUESTS] == 6 and ERRORS not in counts
    await slow.close()


async def test_restarted_worker_resumes_its_own_pending_entries_first(
    redis_url: str, redis_client
) -> None:
    # claims are effectively off: only reading its own pending list can bring them back
    settings = fast_settings(redis_url, claim_idle_ms=600_000, max_batch_size=2)
    slow = SlowHandler(settings)
    async with Producer(settings=settings) as p:
        ids = [await p.submit("m1", "embed", ["sleep=1.5"]) for _ in range(3)]
        async with consumers(settings, [slow], names=["stable"]) as (first_life,):
            await wait_until(lambda: _any_running(p, ids), 5, "a batch to start")
            await crash(first_life)
        assert await pending_count(redis_client, "stable") == 3
        started = time.monotonic()
        async with consumers(settings, [EchoHandler(settings)], names=["stable"]):
            results = await asyncio.gather(*(p.result(j, timeout_s=10) for j in ids))
        assert time.monotonic() - started < 3
    assert sorted(r["job_id"] for r in results) == sorted(ids)
    assert await _delivery_counts(redis_client) == []
    await slow.close()


async def test_shutdown_finishes_in_flight_and_hands_back_the_rest(
    redis_url: str, redis_client
) -> None:
    settings = fast_settings(redis_url, claim_idle_ms=600_000, max_batch_size=2)
    slow = SlowHandler(settings)
    async with Producer(settings=settings) as p:
        ids = [await p.submit("m1", "embed", ["sleep=0.8"]) for _ in range(4)]
        async with consumers(settings, [slow], names=["leaving"]) as (leaving,):
            await wait_until(lambda: _any_running(p, ids), 5, "a batch to start")
            running = [j for j in ids if (await p.status(j))["status"] == "running"]
            assert await pending_count(redis_client, "leaving") == 4  # 2 running + 2 waiting
            handed = await leaving.stop(grace_s=5)
        assert handed == 2
        for job_id in running:
            status = await p.status(job_id)
            assert status["status"] == "done" and status["worker"] == "leaving"
        async with consumers(settings, [RecordingEchoHandler(settings)], names=["stayer"]):
            rest = await asyncio.gather(
                *(p.result(j, timeout_s=5) for j in ids if j not in running)
            )
    assert len(rest) == 2
    runs = Counter(
        c["job_id"]
        for c in await recorded_events(redis_client, settings)
        if c["event"] in ("start", "run")
    )
    assert set(runs.values()) == {1} and len(runs) == 4  # nothing ran twice
    counts = await read_stats(redis_client)
    assert counts[COMPLETED] == 4 and FAILED not in counts and ERRORS not in counts
    assert await pending_count(redis_client) == 0
    await slow.close()


async def test_shutdown_past_grace_hands_back_the_unfinished_batch(
    redis_url: str, redis_client
) -> None:
    settings = fast_settings(redis_url, claim_idle_ms=600_000, max_batch_size=1)
    slow = SlowHandler(settings)
    async with Producer(settings=settings) as p:
        job_id = await p.submit("m1", "embed", ["sleep=1.5"])
        async with consumers(settings, [slow], names=["impatient"]) as (worker,):
            await wait_until(lambda: _status(p, job_id, "running"), 5, "the job to start")
            assert await worker.stop(grace_s=0.2) == 1
        assert (await p.status(job_id))["status"] == "queued"
        async with consumers(settings, [EchoHandler(settings)], names=["next"]):
            assert (await p.result(job_id, timeout_s=5))["job_id"] == job_id
    assert FAILED not in await read_stats(redis_client)
    await slow.close()


async def _status(p: Producer, job_id: str, status: str) -> bool:
    return (await p.status(job_id))["status"] == status


async def _any_running(p: Producer, ids: list[str]) -> bool:
    for job_id in ids:
        if (await p.status(job_id))["status"] == "running":
            return True
    return False


async def _pending_is(redis, consumer: str, n: int) -> bool:
    return await pending_count(redis, consumer) == n


async def test_pending_entries_deleted_by_hand_do_not_wedge_a_worker(
    redis_url: str, redis_client
) -> None:
    settings = fast_settings(redis_url, claim_idle_ms=300)
    await redis_client.xgroup_create(KEYS.jobs, KEYS.jobs_group, id="0", mkstream=True)
    for consumer in ("stable", "ghost"):  # one own pending entry, one of a dead worker
        entry_id = await redis_client.xadd(KEYS.jobs, {"model": "m1", "task": "embed", "text": "x"})
        await redis_client.xreadgroup(KEYS.jobs_group, consumer, {KEYS.jobs: ">"}, count=1)
        await redis_client.xdel(KEYS.jobs, entry_id)  # an operator trimmed the stream
    async with consumers(settings, [EchoHandler(settings)], names=["stable"]):
        await wait_until(lambda: _pending_is(redis_client, "stable", 0), 5, "the own entry acked")
        await asyncio.sleep(1.0)  # the ghost's nil entry goes through XAUTOCLAIM
        async with Producer(settings=settings) as p:
            job_id = await p.submit("m1", "embed", ["after"])
            assert (await p.result(job_id, timeout_s=5))["inputs"] == ["after"]


async def test_a_worker_started_while_redis_is_out_of_memory_joins_its_group(
    private_redis: RedisServer,
) -> None:
    """Redis out of memory refuses ``XGROUP CREATE`` even for a group that exists: a worker
    restarted then (its consumer's start creates the group unless it exists) must start."""
    client = aioredis.Redis.from_url(private_redis.url)
    store = JobStore(client, fast_settings(private_redis.url))
    try:
        await client.config_set("maxmemory", 1)
        with pytest.raises(OutOfMemoryError):  # no group yet: it cannot be made
            await store.ensure_group()
        await client.config_set("maxmemory", 64 << 20)
        await store.ensure_group()
        await client.config_set("maxmemory", 1)
        await store.ensure_group()  # it exists: nothing to create, nothing refused
        assert [g["name"] for g in await client.xinfo_groups(KEYS.jobs)] == [
            KEYS.jobs_group.encode()
        ]
    finally:
        await client.config_set("maxmemory", 64 << 20)
        await client.aclose()

"""A job cancelled while queued never starts, and is counted cancelled once: the cancel can
land between a worker's cancel check and its start (two Redis calls), and the start script
must see it then. Real Redis, real consumers, cancels racing them."""

from __future__ import annotations

import asyncio
import random

import redis.asyncio as aioredis

from producer import Producer
from sw_core.counters import CANCELLED
from sw_core.pipeline.jobs import decode_entry
from sw_core.pipeline.lifecycle import JobEnds
from sw_core.pipeline.store import START_CANCELLED, JobStore
from tests.support.handlers import RecordingEchoHandler
from tests.support.observe import KEYS, job_outcomes, pending_count, read_stats, recorded_events
from tests.support.pipeline import consumers
from tests.support.settings import fast_settings
from tests.support.waiting import wait_until


async def test_a_cancel_between_the_check_and_the_start_keeps_the_job_from_running(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    settings = fast_settings(redis_url)
    store, ends = JobStore(redis_client, settings), JobEnds(redis_client, settings)
    await store.ensure_group()
    async with Producer(settings=settings) as producer:
        job_id = await producer.submit("m1", "embed", ["hello"])
        [(entry_id, fields)] = await store.read("w", ">", 1, None)
        job = decode_entry(entry_id, fields or {}, settings)
        assert await ends.check([job]) == ["ok"]  # the worker's check: not cancelled yet
        assert await producer.cancel(job_id) == "cancelled"  # queued: it must never run
        assert await store.start([job], "w") == [START_CANCELLED]
        status = await producer.status(job_id)
        assert status["status"] == "cancelled" and "started_ms" not in status
        assert await ends.end(job, "cancelled")  # the worker acks it ...
    assert (await read_stats(redis_client))[CANCELLED] == 1  # ... counted once
    assert await pending_count(redis_client) == 0
    assert await redis_client.xlen(KEYS.jobs) == 0


async def test_cancels_racing_a_worker_never_start_a_cancelled_job(
    redis_url: str, redis_client: aioredis.Redis, monkeypatch
) -> None:
    """40 jobs, each cancelled a few ms after its submit while a worker takes them; the
    worker pauses a little between its check and its start (as a busy one does)."""
    settings = fast_settings(redis_url, max_batch_size=4)
    check = JobEnds.check

    async def slow_check(self: JobEnds, jobs: list) -> list[str]:
        outcome = await check(self, jobs)
        await asyncio.sleep(0.02)
        return outcome

    monkeypatch.setattr(JobEnds, "check", slow_check)
    rng = random.Random(7)
    handler = RecordingEchoHandler(settings)
    async with consumers(settings, [handler]), Producer(settings=settings) as producer:

        async def submit_and_cancel(i: int) -> tuple[str, str]:
            job_id = await producer.submit("m1", "embed", [f"text {i}"])
            await asyncio.sleep(rng.uniform(0, 0.04))
            return job_id, await producer.cancel(job_id)

        replies = dict(await asyncio.gather(*(submit_and_cancel(i) for i in range(40))))

        async def ended() -> bool:
            outcomes = await job_outcomes(redis_client, KEYS, list(replies))
            return all(s in ("done", "cancelled") for s in outcomes.values())

        await wait_until(ended, 20, "every job to end")

        async def acked() -> bool:
            return await pending_count(redis_client) == 0

        await wait_until(acked, 10, "the acks")
    outcomes = await job_outcomes(redis_client, KEYS, list(replies))
    ran = {event["job_id"] for event in await recorded_events(redis_client, settings)}
    cancelled_queued = [j for j, reply in replies.items() if reply == "cancelled"]
    assert cancelled_queued, replies  # the race happened: some cancels found the job queued
    for job_id in cancelled_queued:
        assert outcomes[job_id] == "cancelled", (job_id, outcomes[job_id])
        assert job_id not in ran, f"job {job_id} ran after its cancel"
        assert not await redis_client.hexists(KEYS.job(job_id), "started_ms")
    counted = (await read_stats(redis_client)).get(CANCELLED, 0)
    assert counted == sum(1 for s in outcomes.values() if s == "cancelled")

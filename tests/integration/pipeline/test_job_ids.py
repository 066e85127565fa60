"""An entry carrying the id of another job must not touch that job."""

from __future__ import annotations

from producer import Producer
from sw_core.counters import COMPLETED, DEAD_LETTERED, TOTAL_REQUESTS
from tests.support.handlers import EchoHandler, FlakyHandler
from tests.support.observe import KEYS, dead_letters, pending_count, read_stats
from tests.support.pipeline import consumers
from tests.support.settings import fast_settings
from tests.support.waiting import wait_until


async def test_hand_added_entry_cannot_overwrite_a_finished_job(redis_url, redis_client) -> None:
    settings = fast_settings(redis_url)
    async with consumers(settings, [EchoHandler(settings)]), Producer(settings=settings) as p:
        job_id = await p.submit("m1", "embed", ["legit"])
        assert (await p.result(job_id, timeout_s=10))["inputs"] == ["legit"]
        await redis_client.xadd(
            KEYS.jobs, {"job_id": job_id, "model": "m1", "task": "embed", "text": "evil"}
        )
        await wait_until(lambda: _dlq_len(redis_client), 10, "the duplicate's dead letter")
        await wait_until(lambda: _no_pending(redis_client), 5, "the duplicate acked")
        assert (await p.result(job_id, timeout_s=1))["inputs"] == ["legit"]
        status = await p.status(job_id)
    assert status["status"] == "done"
    assert await redis_client.llen(KEYS.job_done(job_id)) == 1
    [letter] = await dead_letters(redis_client)
    assert letter["reason"] == "duplicate_job_id" and letter["job_id"] == job_id
    assert job_id in letter["error"]
    counts = await read_stats(redis_client)
    assert counts[TOTAL_REQUESTS] == counts[COMPLETED] + counts[DEAD_LETTERED] == 2


async def test_same_hand_added_entry_twice_runs_once(redis_url, redis_client) -> None:
    settings = fast_settings(redis_url)
    fields = {"job_id": "dup-1", "model": "m1", "task": "embed", "text": "hello"}
    await redis_client.xadd(KEYS.jobs, fields)
    await redis_client.xadd(KEYS.jobs, fields)
    async with consumers(settings, [EchoHandler(settings)]):
        await wait_until(lambda: _dlq_len(redis_client), 10, "the second entry's dead letter")
        await wait_until(lambda: _no_pending(redis_client), 5, "both entries acked")
    assert await redis_client.llen(KEYS.job_done("dup-1")) == 1
    assert await redis_client.hget(KEYS.job("dup-1"), "status") == b"done"
    [letter] = await dead_letters(redis_client)
    assert letter["reason"] == "duplicate_job_id"


async def test_own_retry_still_runs_and_a_forgery_during_the_retry_does_not(
    redis_url, redis_client
) -> None:
    settings = fast_settings(redis_url, retry_initial_delay_s=1.0, retry_jitter=0.0)
    async with consumers(settings, [FlakyHandler(settings)]), Producer(settings=settings) as p:
        job_id = await p.submit("m1", "embed", ["fail=1"])
        await wait_until(
            lambda: _status_is(redis_client, job_id, b"retrying"), 10, "the first failure"
        )
        await redis_client.xadd(
            KEYS.jobs, {"job_id": job_id, "model": "m1", "task": "embed", "text": "evil"}
        )
        result = await p.result(job_id, timeout_s=15)
    assert result["inputs"] == ["fail=1"] and result["attempt"] == 2
    [letter] = await dead_letters(redis_client)
    assert letter["reason"] == "duplicate_job_id"


async def _dlq_len(redis_client) -> bool:
    return await redis_client.xlen(KEYS.dlq) >= 1


async def _no_pending(redis_client) -> bool:
    return await pending_count(redis_client) == 0


async def _status_is(redis_client, job_id: str, status: bytes) -> bool:
    return await redis_client.hget(KEYS.job(job_id), "status") == status

"""Repeated fields and internal fields from outside are refused."""

from __future__ import annotations

import pytest

from producer import Producer
from sw_core.counters import COMPLETED, DEAD_LETTERED, TOTAL_REQUESTS
from sw_core.pipeline.jobs import Job, encode_job
from tests.support.handlers import EchoHandler
from tests.support.observe import KEYS, dead_letters, pending_count, read_stats
from tests.support.pipeline import consumers
from tests.support.settings import fast_settings
from tests.support.waiting import wait_until

HOSTILE = {
    "repeated model": (
        ["model", "nosuchmodel", "task", "embed", "text", "a", "model", "m1"],
        "model given more than once",
    ),
    "hand-set counted": (
        ["model", "m1", "task", "embed", "text", "a", "counted", "1"],
        "counted are set by producers and workers only",
    ),
    "hand-set attempt": (
        ["model", "m1", "task", "embed", "text", "a", "attempt", "1000000000"],
        "attempt are set by producers and workers only",
    ),
    "huge attempt in a payload entry": (
        [
            item
            for name, value in encode_job(
                Job(job_id="j-att", model="m1", task="embed", inputs=["a"], attempt=10**9)
            ).items()
            for item in (name, value)
        ],
        "attempt=1000000000 is over retry_attempts=3",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_hostile_fields_are_dead_lettered(case: str, redis_url, redis_client) -> None:
    settings = fast_settings(redis_url)
    flat, expected = HOSTILE[case]
    await redis_client.execute_command("XADD", KEYS.jobs, "*", *flat)
    async with consumers(settings, [EchoHandler(settings)]):
        await wait_until(lambda: _dlq_len(redis_client, 1), 10, "the dead letter")
        await wait_until(lambda: _no_pending(redis_client), 5, "the entry acked")
    [letter] = await dead_letters(redis_client)
    assert letter["reason"] == "malformed" and expected in letter["error"], letter
    counts = await read_stats(redis_client)
    assert counts.get(COMPLETED, 0) == 0
    assert counts[TOTAL_REQUESTS] == counts[DEAD_LETTERED] == 1


async def test_producer_entry_made_malformed_is_counted_once(redis_url, redis_client) -> None:
    """A registered job whose entry turns out malformed is not counted a second time."""
    settings = fast_settings(redis_url)
    async with Producer(settings=settings) as p:
        await p.submit("m1", "embed", ["a"])
    strict = fast_settings(redis_url, max_payload_bytes=8)  # the worker refuses it
    async with consumers(strict, [EchoHandler(strict)]):
        await wait_until(lambda: _dlq_len(redis_client, 1), 10, "the dead letter")
    counts = await read_stats(redis_client)
    assert counts[TOTAL_REQUESTS] == counts[DEAD_LETTERED] == 1


async def test_forged_counted_payload_is_still_counted(redis_url, redis_client) -> None:
    """A msgpack entry claiming ``counted`` but registered by no producer counts its request."""
    settings = fast_settings(redis_url)
    forged = encode_job(Job(job_id="forged-1", model="m1", task="embed", inputs=["a"]))
    assert forged["counted"] == b"1"
    await redis_client.xadd(KEYS.jobs, forged)
    async with consumers(settings, [EchoHandler(settings)]):
        await wait_until(
            lambda: _status_is(redis_client, "forged-1", b"done"), 10, "the forged job done"
        )
    counts = await read_stats(redis_client)
    assert counts[COMPLETED] == counts[TOTAL_REQUESTS] == 1


async def _dlq_len(redis_client, n: int) -> bool:
    return await redis_client.xlen(KEYS.dlq) >= n


async def _no_pending(redis_client) -> bool:
    return await pending_count(redis_client) == 0


async def _status_is(redis_client, job_id: str, status: bytes) -> bool:
    return await redis_client.hget(KEYS.job(job_id), "status") == status

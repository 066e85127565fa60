"""Scenario 1b: kill -9 aimed at a worker in the middle of a batch.

Two inference nodes run slow jobs (:class:`~tests.support.handlers.SlowHandler`, no chunks).
The victim is SIGKILLed while it runs a batch, so it dies holding entries: the survivor
must reclaim them within ``claim_idle_ms`` (plus 2 s of slack), every job must complete
exactly as submitted, only entries the victim held may run twice, and nothing may be counted
as an error or dead-lettered. The soak (scenario 1) kills at random and checks totals; this
one always exercises the reclaim path and times it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from producer import Producer
from sw_core.counters import COMPLETED, DEAD_LETTERED, ERRORS, TOTAL_REQUESTS
from tests.support.observe import KEYS, pending_count, read_stats, recorded_events
from tests.support.processes import Cluster, worker_env
from tests.support.settings import fast_settings
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

SLOW = "tests.support.handlers:SlowHandler"


async def _pending_entries(redis, consumer: str) -> dict[str, str]:
    """entry id -> job id of the entries ``consumer`` holds."""
    rows = await redis.xpending_range(KEYS.jobs, KEYS.jobs_group, "-", "+", 1000, consumer)
    out = {}
    for row in rows:
        entry_id = row["message_id"].decode()
        ((_, fields),) = await redis.xrange(KEYS.jobs, entry_id, entry_id)
        out[entry_id] = fields[b"job_id"].decode()
    return out


async def _has_running(p: Producer, ids: list[str], worker: str) -> bool:
    for job_id in ids:
        status = await p.status(job_id)
        if status["status"] == "running" and status.get("worker") == worker:
            return True
    return False


async def _pending_is(redis, consumer: str, n: int) -> bool:
    return await pending_count(redis, consumer) == n


async def test_kill_9_one_of_two_workers_mid_batch_loses_nothing(
    redis_url: str, redis_client, cluster: Cluster
) -> None:
    claim_idle_ms = 2000
    settings = fast_settings(
        redis_url, claim_idle_ms=claim_idle_ms, max_batch_size=2, poll_block_ms=100
    )
    env = worker_env(settings, SW_HANDLER=SLOW, PIPELINE_SLOW_S="1.0")
    for name in ("victim", "survivor"):
        cluster.add(name, env)
    await cluster.wait_registered(redis_client, KEYS, 30)
    async with Producer(settings=settings) as p:
        ids = [await p.submit("m1", "embed", [f"job {i}"]) for i in range(12)]
        await wait_until(lambda: _has_running(p, ids, "victim"), 15, "a batch on the victim")
        cluster["victim"].kill()
        killed_at = time.monotonic()
        held = await _pending_entries(redis_client, "victim")  # frozen: it is dead
        assert held, "the victim held no entries when it died"
        took = await wait_until(
            lambda: _pending_is(redis_client, "victim", 0),
            claim_idle_ms / 1000 + 5,
            "the survivor to reclaim the victim's entries",
        )
        results = await asyncio.gather(*(p.result(j, timeout_s=60) for j in ids))
    assert took <= claim_idle_ms / 1000 + 2, took
    assert [r["job_id"] for r in results] == ids  # 0 lost
    events = await recorded_events(redis_client, settings)
    starts = Counter(e["job_id"] for e in events if e["event"] == "start")
    duplicates = {job_id for job_id, n in starts.items() if n > 1}
    assert duplicates <= set(held.values()), (duplicates, held)
    assert len(duplicates) <= len(held)
    assert set(starts) == set(ids)
    counts = await read_stats(redis_client)
    assert counts[COMPLETED] == 12 and counts[TOTAL_REQUESTS] == 12
    assert ERRORS not in counts and DEAD_LETTERED not in counts
    assert await pending_count(redis_client) == 0
    print(
        f"reclaimed {len(held)} entries in {took:.2f} s; {len(duplicates)} ran twice; "
        f"all done {time.monotonic() - killed_at:.1f} s after the kill"
    )

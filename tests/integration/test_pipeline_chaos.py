"""Real worker processes (``python -m arq workers.Settings``): kill -9 and SIGTERM drains."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from producer import Producer
from sw_core.ops.stats import COMPLETED, DEAD_LETTERED, ERRORS, FAILED, TOTAL_REQUESTS
from tests.support.observe import KEYS, calls_key, pending_count, read_stats
from tests.support.processes import start_worker, worker_env
from tests.support.settings import fast_settings
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.chaos]

SLOW = "tests.support.handlers:SlowHandler"


async def _events(redis) -> list[dict]:
    return [
        json.loads(x) for x in await redis.lrange(calls_key(_SETTINGS_FOR_KEYS.key_prefix), 0, -1)
    ]


_SETTINGS_FOR_KEYS = fast_settings("redis://unused:1/0")


async def _workers_up(redis, names: list[str]) -> bool:
    return all([await redis.exists(KEYS.worker(n)) for n in names])


async def _pending_entries(redis, consumer: str) -> dict[str, str]:
    """entry id -> job id of the entries ``consumer`` holds."""
    rows = await redis.xpending_range(KEYS.jobs, KEYS.jobs_group, "-", "+", 1000, consumer)
    out = {}
    for row in rows:
        entry_id = row["message_id"].decode()
        ((_, fields),) = await redis.xrange(KEYS.jobs, entry_id, entry_id)
        out[entry_id] = fields[b"job_id"].decode()
    return out


async def _running_on(p: Producer, ids: list[str], worker: str) -> list[str]:
    out = []
    for job_id in ids:
        status = await p.status(job_id)
        if status["status"] == "running" and status.get("worker") == worker:
            out.append(job_id)
    return out


@pytest.mark.slow
async def test_kill_9_one_of_two_workers_mid_batch_loses_nothing(
    redis_url: str, redis_client, tmp_path: Path
) -> None:
    claim_idle_ms = 2000
    settings = fast_settings(
        redis_url, claim_idle_ms=claim_idle_ms, max_batch_size=2, poll_block_ms=100
    )
    procs = {
        name: start_worker(
            worker_env(settings, SW_HANDLER=SLOW, SW_WORKER_NAME=name, PIPELINE_SLOW_S="1.0"),
            tmp_path / f"{name}.log",
        )
        for name in ("victim", "survivor")
    }
    try:
        await wait_until(lambda: _workers_up(redis_client, list(procs)), 30, "both workers")
        async with Producer(settings=settings) as p:
            ids = [await p.submit("m1", "embed", [f"job {i}"]) for i in range(12)]
            await wait_until(lambda: _has_running(p, ids, "victim"), 15, "a batch on the victim")
            procs["victim"].send_signal(signal.SIGKILL)
            procs["victim"].wait(10)
            killed_at = time.monotonic()
            held = await _pending_entries(redis_client, "victim")  # frozen: it is dead
            assert held, "the victim held no entries when it died"
            took = await wait_until(
                lambda: _pending_is(redis_client, "victim", 0), claim_idle_ms / 1000 + 5,
                "the survivor to reclaim the victim's entries",
            )  # fmt: skip
            results = await asyncio.gather(*(p.result(j, timeout=60) for j in ids))
        assert took <= claim_idle_ms / 1000 + 2, took
        assert [r["job_id"] for r in results] == ids  # 0 lost
        starts = Counter(e["job_id"] for e in await _events(redis_client) if e["event"] == "start")
        duplicates = {job_id for job_id, n in starts.items() if n > 1}
        assert duplicates <= set(held.values()), (duplicates, held)
        assert len(duplicates) <= len(held)
        assert set(starts) == set(ids)
        counts = await read_stats(redis_client)
        assert counts[COMPLETED] == 12 and counts[TOTAL_REQUESTS] == 12
        assert ERRORS not in counts and DEAD_LETTERED not in counts
        assert await pending_count(redis_client) == 0
        print(f"reclaimed {len(held)} entries in {took:.2f} s; {len(duplicates)} ran twice; "
              f"all done {time.monotonic() - killed_at:.1f} s after the kill")  # fmt: skip
    finally:
        for proc in procs.values():
            proc.kill()


@pytest.mark.slow
async def test_sigterm_drains_in_flight_and_hands_the_rest_to_the_other_worker(
    redis_url: str, redis_client, tmp_path: Path
) -> None:
    # reclaiming is effectively off: only the hand-back can move entries to the stayer
    settings = fast_settings(
        redis_url, claim_idle_ms=600_000, max_batch_size=2, shutdown_grace_s=15
    )
    procs = {
        name: start_worker(
            worker_env(settings, SW_HANDLER=SLOW, SW_WORKER_NAME=name, PIPELINE_SLOW_S="1.5"),
            tmp_path / f"{name}.log",
        )
        for name in ("leaver", "stayer")
    }
    try:
        await wait_until(lambda: _workers_up(redis_client, list(procs)), 30, "both workers")
        async with Producer(settings=settings) as p:
            ids = [await p.submit("m1", "embed", [f"job {i}"]) for i in range(12)]
            await wait_until(
                lambda: _busy_with_backlog(redis_client, p, ids, "leaver"), 15,
                "the leaver to run a batch with more entries waiting",
            )  # fmt: skip
            in_flight = await _running_on(p, ids, "leaver")
            held = set((await _pending_entries(redis_client, "leaver")).values())
            untouched = held - set(in_flight)
            procs["leaver"].send_signal(signal.SIGTERM)
            assert procs["leaver"].wait(20) == 0
            results = await asyncio.gather(*(p.result(j, timeout=60) for j in ids))
            finals = {j: await p.status(j) for j in ids}
        assert in_flight and untouched
        assert [r["job_id"] for r in results] == ids
        for job_id in in_flight:  # finished by the leaver during its drain
            assert finals[job_id]["worker"] == "leaver" and finals[job_id]["attempts"] == 1
        for job_id in untouched:  # handed back at once, run by the stayer
            assert finals[job_id]["worker"] == "stayer"
        starts = Counter(e["job_id"] for e in await _events(redis_client) if e["event"] == "start")
        assert set(starts.values()) == {1}  # nothing ran twice
        counts = await read_stats(redis_client)
        assert counts[COMPLETED] == 12 and counts[TOTAL_REQUESTS] == 12
        assert FAILED not in counts and ERRORS not in counts
        assert not await redis_client.exists(KEYS.worker("leaver"))  # deregistered
    finally:
        for proc in procs.values():
            proc.kill()


async def _has_running(p: Producer, ids: list[str], worker: str) -> bool:
    return bool(await _running_on(p, ids, worker))


async def _busy_with_backlog(redis, p: Producer, ids: list[str], worker: str) -> bool:
    running = await _running_on(p, ids, worker)
    return bool(running) and await pending_count(redis, worker) > len(running)


async def _pending_is(redis, consumer: str, n: int) -> bool:
    return await pending_count(redis, consumer) == n

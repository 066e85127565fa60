"""Latency histograms and monitor state against the real Redis."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest
import redis
import redis.asyncio as aioredis

from sw_core.keys import Keys
from sw_core.ops.metrics import (
    Histogram,
    read_latency,
    read_latency_sync,
    record_latency,
    record_latency_sync,
)
from sw_core.ops.monitor import StreamingMonitor
from sw_core.settings import Settings
from workers.heartbeat import Heartbeat

KEYS = Keys("sw")


def test_concurrent_writers_add_up_exactly(redis_url: str) -> None:
    rng = random.Random(7)
    per_thread = [[rng.expovariate(5.0) for _ in range(200)] for _ in range(6)]

    def write(values: list[float]) -> None:
        client = redis.Redis.from_url(redis_url)
        for i in range(0, len(values), 7):
            record_latency_sync(client, "embed", *values[i : i + 7])
        client.close()

    threads = [threading.Thread(target=write, args=(v,)) for v in per_thread]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client = redis.Redis.from_url(redis_url)
    stored = read_latency_sync(client)["embed"]
    client.close()
    expected = Histogram.from_observations(v for values in per_thread for v in values)
    assert stored.counts == expected.counts
    assert stored.count == 1200
    assert stored.sum_s == pytest.approx(expected.sum_s, abs=1e-3)
    assert stored.max_s == pytest.approx(expected.max_s)
    for q in (0.5, 0.95, 0.99):
        assert stored.quantile(q) == pytest.approx(expected.quantile(q))


async def test_async_recording_and_monitor_percentiles(redis_client) -> None:
    assert await record_latency(redis_client, "generate") == 0  # nothing to record
    assert await record_latency(redis_client, "generate", 0.5, 1.5, 2.0, -1.0) == 4
    assert await record_latency(redis_client, "embed", 0.01) == 1
    histograms = await read_latency(redis_client)
    assert sorted(histograms) == ["embed", "generate"]
    assert histograms["generate"].counts[0] == 1  # the negative duration counts as 0 s
    settings = Settings.from_env({}, redis_url=_url(redis_client))
    async with StreamingMonitor(settings=settings) as monitor:
        stats = await monitor.get_stats()
    generate = stats["latency"]["generate"]
    assert generate["count"] == 4 and generate["max_s"] == pytest.approx(2.0)
    assert 0.25 <= generate["p50"] <= 1.0  # rank 2 of 4: in the (0.25, 0.5] .. (0.5, 1] range
    assert generate["p99"] == pytest.approx(2.0)


def _url(client: aioredis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


async def test_queue_pending_retries_and_dead_letters_from_real_streams(redis_client) -> None:
    settings = Settings.from_env({}, redis_url=_url(redis_client))
    monitor = StreamingMonitor(settings=settings)
    for i in range(5):
        await redis_client.xadd(KEYS.jobs, {"n": i})
    stats = await monitor.get_stats()
    assert (stats["queue_length"], stats["pending"]) == (5, 0)  # no group yet: all wait

    await redis_client.xgroup_create(KEYS.jobs, KEYS.jobs_group, id="0")
    read = await redis_client.xreadgroup(KEYS.jobs_group, "c1", {KEYS.jobs: ">"}, count=3)
    ids = [entry_id for entry_id, _ in read[0][1]]
    await redis_client.xack(KEYS.jobs, KEYS.jobs_group, ids[0])
    await redis_client.xdel(KEYS.jobs, ids[0])  # workers delete what they acked
    await redis_client.zadd(KEYS.retries, {"job-a": 1, "job-b": 2})
    await redis_client.xadd(KEYS.dlq, {"job_id": "x"})
    stats = await monitor.get_stats()
    assert stats["queue_length"] == 2  # never delivered
    assert stats["pending"] == 2  # delivered, not acked
    assert stats["scheduled_retries"] == 2 and stats["dead_letters"] == 1
    assert stats["consumers"] == 1
    sync_stats = monitor.get_stats_sync()
    assert (sync_stats["queue_length"], sync_stats["pending"]) == (2, 2)
    await monitor.aclose()


async def test_only_heartbeating_workers_are_live(redis_client) -> None:
    settings = Settings.from_env(
        {}, redis_url=_url(redis_client), heartbeat_interval_s=0.1, heartbeat_ttl_s=1
    )
    beats = [
        Heartbeat(
            redis_client,
            settings,
            worker_id=f"w{i}",
            kind=kind,
            report=lambda: {"current_jobs": "j9"},
        )
        for i, kind in enumerate(("inference", "loader"))
    ]
    for beat in beats:
        await beat.start()
    async with StreamingMonitor(settings=settings) as monitor:
        stats = await monitor.get_stats()
        assert stats["workers_by_kind"] == {"inference": 1, "loader": 1}
        assert all(w["current"] == "j9" and w["age_s"] < 1 for w in stats["workers"])
        # a worker that stops beating (killed: its entries stay behind) drops out
        beats[1]._task.cancel()
        started = time.monotonic()
        while (await monitor.get_stats())["workers_by_kind"].get("loader"):
            assert time.monotonic() - started < 3, "the silent worker never dropped out"
            await asyncio.sleep(0.05)
        assert time.monotonic() - started >= 0.5
        stats = await monitor.get_stats()
        assert [w["id"] for w in stats["workers"]] == ["w0"]
    await beats[0].stop()


async def test_job_latencies_are_grouped_by_task_and_never_raise(redis_client) -> None:
    from sw_core.ops.metrics import record_job_latencies
    from sw_core.pipeline.jobs import Job

    now_ms = 1_000_000
    jobs = [
        Job("a", "m", "embed", ["x"], submitted_ms=now_ms - 40),
        Job("b", "m", "embed", ["x"], submitted_ms=now_ms - 2_000),
        Job("c", "m", "generate", ["x"], submitted_ms=now_ms - 700),
        Job("d", "m", "generate", ["x"], submitted_ms=0),  # unknown submission time: skipped
    ]
    await record_job_latencies(redis_client, jobs, now_ms=now_ms)
    histograms = await read_latency(redis_client)
    assert histograms["embed"].count == 2 and histograms["embed"].max_s == pytest.approx(2.0)
    assert histograms["generate"].count == 1
    assert histograms["generate"].sum_s == pytest.approx(0.7)

    broken = aioredis.Redis.from_url("redis://127.0.0.1:1/0")
    await record_job_latencies(broken, jobs, now_ms=now_ms)  # logged, not raised
    await broken.aclose()

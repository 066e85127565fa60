"""Bounded queue: SW_MAX_QUEUED_JOBS refuses submits atomically, hand-added entries still run."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from producer import Producer
from sw_core.cli import main
from sw_core.cli.pipeline_cmds import EXIT_QUEUE_FULL
from sw_core.exceptions import QueueFullError, is_transient
from sw_core.keys import Keys
from tests.support.handlers import EchoHandler
from tests.support.observe import read_stats
from tests.support.pipeline import consumers
from tests.support.settings import fast_settings

KEYS = Keys()


async def _job_hashes(redis: aioredis.Redis) -> list[bytes]:
    keys = [k async for k in redis.scan_iter(match="sw:job:*")]
    return [k for k in keys if not k.endswith((b":done", b":tokens"))]


async def test_full_queue_refuses_with_nothing_written(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    settings = fast_settings(redis_url, max_queued_jobs=3, models="m1=/srv/m1")
    async with Producer(settings=settings) as producer:
        ids = [await producer.submit("m1", "embed", [f"t{i}"]) for i in range(3)]
        with pytest.raises(QueueFullError) as refused:
            await producer.submit("m1", "embed", ["one too many"])
    assert is_transient(refused.value)
    assert await redis_client.xlen(KEYS.jobs) == 3
    assert sorted(await _job_hashes(redis_client)) == sorted(f"sw:job:{i}".encode() for i in ids)
    counters = await read_stats(redis_client)
    assert counters["total_requests"] == 3
    assert counters["queue_full"] == 1


async def test_hand_added_entries_past_the_cap_are_processed(redis_url: str) -> None:
    settings = fast_settings(redis_url, max_queued_jobs=2, models="m1=/srv/m1")
    redis = aioredis.Redis.from_url(redis_url)
    try:
        async with Producer(settings=settings) as producer:
            ids = [await producer.submit("m1", "embed", [f"t{i}"]) for i in range(2)]
            hand = [
                (
                    await redis.xadd(KEYS.jobs, {"model": "m1", "task": "embed", "text": f"h{i}"})
                ).decode()
                for i in range(3)
            ]
            assert await redis.xlen(KEYS.jobs) == 5
            async with consumers(settings, [EchoHandler(settings)]):
                results = await asyncio.gather(
                    *(producer.result(j, timeout_s=20) for j in [*ids, *hand])
                )
            # the queue drained: a producer may submit again
            again = await producer.submit("m1", "embed", ["after"])
    finally:
        await redis.aclose()
    assert [r["inputs"] for r in results] == [["t0"], ["t1"], ["h0"], ["h1"], ["h2"]]
    assert again


def test_sw_submit_exits_with_its_own_status_when_full(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["submit", "m1", "--text", "x", "--redis-url", redis_url]
    env = pytest.MonkeyPatch()
    env.setenv("SW_MAX_QUEUED_JOBS", "1")
    env.setenv("SW_MODELS", "m1=/srv/m1")  # sw submit checks the model
    try:
        assert main(argv) == 0
        assert main(argv) == EXIT_QUEUE_FULL
    finally:
        env.undo()
    err = capsys.readouterr().err
    assert "QueueFullError" in err and "SW_MAX_QUEUED_JOBS=1" in err

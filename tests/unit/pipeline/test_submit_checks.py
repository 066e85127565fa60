"""Pipeline checks that need no Redis server: the producer refuses bad jobs before it
enqueues anything (on fakeredis), and workers load their handler by import path."""

from __future__ import annotations

import fakeredis
import pytest

from producer import Producer
from sw_core.counters import TOTAL_REQUESTS
from sw_core.exceptions import ConfigError, JobError
from tests.support.handlers import EchoHandler
from tests.support.observe import KEYS, read_stats
from tests.support.settings import fast_settings
from workers.jobs.handlers import load_handler

#: Never connected to: the clients below are fakeredis ones.
UNUSED_URL = "redis://127.0.0.1:1/0"


async def test_producer_rejects_bad_jobs_before_enqueueing(
    fake_server: fakeredis.FakeServer, fake_redis
) -> None:
    settings = fast_settings(UNUSED_URL, max_payload_bytes=1024, models="m1=/srv/m1")
    async with Producer(settings=settings, client=fake_redis) as p:
        with pytest.raises(JobError, match="unknown task"):
            await p.submit("m1", "summarize", ["x"])
        with pytest.raises(JobError, match="max_payload_bytes"):
            await p.submit("m1", "embed", ["x" * 2000])
        with pytest.raises(JobError, match="'max_new_tokens' must be an integer from 1 to 512"):
            await p.submit("m1", "generate", ["x"], max_new_tokens=10**6)
    assert await fake_redis.exists(KEYS.jobs) == 0
    assert TOTAL_REQUESTS not in await read_stats(fake_redis)


async def test_a_valid_job_reaches_the_fake_stream(
    fake_server: fakeredis.FakeServer, fake_redis
) -> None:
    """The same producer on the same fake server does enqueue a good job: the refusals
    above are the producer's checks, not a fake that stores nothing."""
    settings = fast_settings(UNUSED_URL, max_payload_bytes=1024, models="m1=/srv/m1")
    async with Producer(settings=settings, client=fake_redis) as p:
        job_id = await p.submit("m1", "embed", ["x"])
    assert await fake_redis.xlen(KEYS.jobs) == 1
    assert (await read_stats(fake_redis))[TOTAL_REQUESTS] == 1
    assert await fake_redis.exists(KEYS.job(job_id)) == 1


async def test_handler_is_loaded_from_its_import_path() -> None:
    settings = fast_settings(UNUSED_URL, handler="tests.support.handlers:EchoHandler")
    handler = await load_handler(settings)
    assert isinstance(handler, EchoHandler)
    for bad in ("tests.support.handlers:Nope", "no_such_module_xyz:thing", "nocolon"):
        with pytest.raises(ConfigError):
            await load_handler(settings, bad)
    with pytest.raises(ConfigError, match="no async run_batch"):
        await load_handler(settings, "tests.support.settings:fast_settings")

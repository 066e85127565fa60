"""The chunk cache on its own Redis (``SW_CACHE_REDIS_URL``): queues on an AOF, noeviction
server, the cache on one without persistence; workers, the monitor and ``sw health`` use both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from producer import Producer
from sw_core.cache import ChunkCache
from sw_core.keys import Keys
from sw_core.local.redis_server import RedisServer
from sw_core.ops.health import check_health
from sw_core.ops.monitor import StreamingMonitor
from sw_core.settings import Settings
from tests.support.processes import Cluster, worker_env
from tests.support.settings import CHAOS, fast_settings
from tests.support.storage import write_chunk_set

KEYS = Keys("sw")


@pytest.fixture
def two_servers(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    queues = RedisServer(workdir=tmp_path / "queues", appendonly=True)
    cache = RedisServer(workdir=tmp_path / "cache", maxmemory_mb=256)
    for server in (queues, cache):
        server.workdir.mkdir()
    with queues, cache:
        yield queues, cache


def test_the_cache_url_defaults_to_the_queue_url_and_is_redacted() -> None:
    plain = Settings.from_env({}, redis_url="redis://:pw-1@q:6379/0")
    assert plain.cache_url == plain.redis_url and not plain.cache_is_separate
    split = Settings.from_env({"SW_CACHE_REDIS_URL": "redis://:pw-2@c:6379/0"})
    assert split.cache_url == "redis://:pw-2@c:6379/0" and split.cache_is_separate
    assert "pw-2" not in repr(split) and "pw-2" not in str(split.as_dict())
    with ChunkCache.from_settings(split) as cache:
        assert cache.redis.connection_pool.connection_kwargs["host"] == "c"


async def test_workers_monitor_and_health_use_the_cache_server(
    two_servers: tuple[RedisServer, RedisServer], tmp_path: Path
) -> None:
    queues, cache_server = two_servers
    write_chunk_set(tmp_path / "tiny", n_chunks=3)
    settings = fast_settings(
        queues.url, CHAOS, cache_redis_url=cache_server.url, models=f"tiny={tmp_path / 'tiny'}"
    )
    group = Cluster(tmp_path / "logs")
    group.log_dir.mkdir()
    admin = redis.asyncio.Redis.from_url(queues.url)
    try:
        group.add("node", worker_env(settings, SW_HANDLER="tests.support.handlers:ChunkHandler"))
        await group.wait_registered(admin, KEYS, 60)
        async with Producer(settings=settings) as producer:
            job_ids = [await producer.submit("tiny", "embed", [f"x{i}"]) for i in range(2)]
            results = [await producer.result(j, timeout_s=30) for j in job_ids]
    finally:
        group.close()
        await admin.aclose()
    assert [r["job_id"] for r in results] == job_ids

    on_queues = redis.Redis.from_url(queues.url)
    on_cache = redis.Redis.from_url(cache_server.url)
    try:
        assert list(on_queues.scan_iter(match="sw:cache:*")) == []
        assert all(on_queues.exists(KEYS.job(j)) for j in job_ids)  # results on the queues
        assert list(on_cache.scan_iter(match="sw:jobs*")) == []
        assert list(on_cache.scan_iter(match="sw:cache:*"))
    finally:
        on_queues.close()
        on_cache.close()
    with ChunkCache.from_settings(settings) as cache:
        info = cache.info()
    assert info.chunks == 3 and info.used_bytes > 0

    with StreamingMonitor(settings=settings) as monitor:
        stats = monitor.get_stats_sync()
    assert stats["cache_chunks"] == 3
    assert stats["cache_bytes"] == info.used_bytes
    assert stats["cache_misses"] >= 3

    checks = {
        c.name: c for c in check_health(settings, require_kinds=(), check_storage=False).checks
    }
    assert checks["redis"].status == "ok" and checks["cache redis"].status == "ok"
    assert checks["cache redis memory"].status == "ok"
    cache_server.stop()
    checks = {
        c.name: c for c in check_health(settings, require_kinds=(), check_storage=False).checks
    }
    assert checks["redis"].status == "ok"
    assert checks["cache redis"].status == "fail"
    with StreamingMonitor(settings=settings) as monitor:
        stats = await asyncio.wait_for(monitor.get_stats(), 30)
    assert stats["cache_chunks"] == 0 and stats["queue_length"] == 0  # queues still read

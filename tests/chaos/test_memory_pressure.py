"""Scenario 6: memory pressure on a Redis with a small ``maxmemory`` and ``noeviction``.

- The chunk cache keeps within its own byte budget and evicts only its own keys: the job
  stream and every other key survive a churn of chunks many times the budget.
- A cache budget larger than what Redis can hold (a misconfiguration) turns Redis' OOM
  answer into a ``CacheError`` that says so; nothing half-written stays behind, and what
  the cache had is still served intact.
- Jobs whose chunks cannot be cached then dead-letter with that ``CacheError`` (a reason an
  operator can act on) -- none is lost, none hangs.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from producer import Producer
from sw_core.cache import ChunkCache
from sw_core.exceptions import CacheError
from sw_core.keys import Keys
from sw_core.local.redis_server import RedisServer
from sw_core.pipeline.registry import ModelRegistry
from tests.chaos.harness import publish_model
from tests.chaos.report import Figures
from tests.support.observe import KEYS, all_ended, job_outcomes, read_stats
from tests.support.processes import Cluster, worker_env
from tests.support.servers import S3Server
from tests.support.settings import CHAOS, fast_settings
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.chaos]

MIB = 1 << 20


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(
        workdir=tmp_path / "small-redis", maxmemory_mb=24, maxmemory_policy="noeviction"
    )
    server.workdir.mkdir(parents=True, exist_ok=True)
    with server:
        yield server


def _chunk(seed: int, size: int = MIB) -> tuple[str, bytes]:
    data = hashlib.sha256(str(seed).encode()).digest() * (size // 32)
    data = os.urandom(64) + data[64:]
    return hashlib.sha256(data).hexdigest(), data


def _used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def _other_keys(client: redis.Redis, prefix: str) -> dict[bytes, bytes]:
    return {k: client.dump(k) for k in client.scan_iter(match=f"{prefix}*")}


def test_the_cache_stays_within_its_budget_and_evicts_only_its_own_keys(
    small_redis: RedisServer,
) -> None:
    client = redis.Redis.from_url(small_redis.url)
    keys = Keys("sw")
    for i in range(50):
        client.set(f"other:keep:{i}", os.urandom(2048))
        client.xadd(keys.jobs, {"model": "m1", "task": "embed", "text": f"job {i}"})
    before_other = _other_keys(client, "other:")
    budget = 4 * MIB
    cache = ChunkCache(client, keys=keys, cache_size_bytes=budget, part_size_bytes=MIB // 2)
    stored: list[str] = []
    for n in range(20):
        chunk_id, data = _chunk(n)
        assert cache.put(chunk_id, data)
        stored.append(chunk_id)
        info = cache.info()
        assert info.used_bytes <= budget, info
        assert _used_memory(client) < 24 * MIB
    info = cache.info()
    assert info.chunks == 4 and info.evictions == 16
    assert _other_keys(client, "other:") == before_other
    assert client.xlen(keys.jobs) == 50
    # the survivors are the 4 most recent, intact
    for chunk_id in stored[-4:]:
        data = cache.get(chunk_id)
        assert data is not None and hashlib.sha256(data).hexdigest() == chunk_id
    cache_keys = [k for k in client.scan_iter(match="sw:cache:*")]
    assert all(k.startswith(b"sw:cache:") for k in cache_keys)
    client.close()


def test_redis_oom_becomes_a_clear_cache_error_and_nothing_is_lost(
    small_redis: RedisServer,
) -> None:
    client = redis.Redis.from_url(small_redis.url)
    keys = Keys("sw")
    client.set("other:keep", b"x" * 1024)
    cache = ChunkCache(
        client, keys=keys, cache_size_bytes=256 * MIB, part_size_bytes=MIB // 2
    )  # misconfigured: far above maxmemory
    stored: dict[str, bytes] = {}
    error: CacheError | None = None
    for n in range(40):
        chunk_id, data = _chunk(1000 + n)
        try:
            assert cache.put(chunk_id, data)
        except CacheError as exc:
            error = exc
            break
        stored[chunk_id] = data
    assert error is not None, "Redis never ran out of memory"
    assert "out of memory" in str(error) and "SW_CACHE_SIZE_MB" in str(error), error
    assert error.transient  # CacheError: retried, then dead-lettered with this message
    # nothing half-written: no staging parts left, the byte count matches the entries
    assert list(client.scan_iter(match="sw:cache:*:staging:*")) == []
    info = cache.info()
    assert info.chunks == len(stored) and info.used_bytes == len(stored) * MIB
    for chunk_id, data in stored.items():  # what was cached is served intact
        got = cache.get(chunk_id)
        assert got is not None and bytes(got) == data
    assert client.get("other:keep") == b"x" * 1024
    client.close()


def _fill_until_free(client: redis.Redis, maxmemory: int, free_bytes: int) -> int:
    """Fill Redis with ``other:filler:*`` keys until about ``free_bytes`` are left."""
    n = 0
    while _used_memory(client) < maxmemory - free_bytes - 256 * 1024:
        client.set(f"other:filler:{n}", os.urandom(256 * 1024))
        n += 1
    return n


@pytest.mark.slow
async def test_jobs_under_redis_oom_dead_letter_with_a_reason_and_none_is_lost(
    small_redis: RedisServer,
    s3: S3Server,
    cluster: Cluster,
    tmp_path: Path,
    long_mode: bool,
    figures,
) -> None:
    import redis.asyncio as aioredis

    started = time.monotonic()
    jobs = 20 if long_mode else 8
    model = await publish_model(s3, tmp_path, n_chunks=6, rows=1024)  # 6 x 1 MiB
    settings = fast_settings(
        small_redis.url,
        CHAOS,
        **s3.settings_overrides(),
        backup_dir=str(model.backup_dir),
        cache_size_mb=512,  # misconfigured: Redis holds 24 MiB
        cache_part_mb=1,
        retry_attempts=3,
        retry_initial_delay_s=0.2,
    )
    client = aioredis.Redis.from_url(small_redis.url)
    sync = redis.Redis.from_url(small_redis.url)
    try:
        await ModelRegistry(client, settings).register(model.name, model.location)
        env = worker_env(settings, SW_HANDLER="tests.support.handlers:ChunkHandler")
        cluster.add("node-a", env)
        cluster.add("loader-1", env, "workers.LoaderSettings")
        await cluster.wait_registered(client, KEYS, 60)
        fillers = await asyncio.to_thread(_fill_until_free, sync, 24 * MIB, 2 * MIB)
        async with Producer(settings=settings) as producer:
            ids = [await producer.submit(model.name, "embed", [f"oom {i}"]) for i in range(jobs)]
        exited: list[str] = []

        async def settled() -> bool:
            # No worker should exit here (workers.arq_compat keeps arq's loop up while its
            # bookkeeping is refused); were one to, restart it as a supervisor would, and
            # count it in the figures.
            for worker in cluster:
                if not worker.alive:
                    exited.append(worker.name)
                    worker.start()
            return await all_ended(client, KEYS, ids)

        await wait_until(settled, 120, "every job to end", 0.2)
        outcomes = await job_outcomes(client, KEYS, ids)
        done = sum(1 for s in outcomes.values() if s == "done")
        dead = sum(1 for s in outcomes.values() if s == "dead")
        letters = await client.xrange(KEYS.dlq)
        reasons = {(f[b"error_type"].decode(), f[b"reason"].decode()) for _, f in letters}
        messages = [f[b"error"].decode() for _, f in letters]
        counts = await read_stats(client, KEYS)
        filler_count = len([k async for k in client.scan_iter(match="other:filler:*")])
    finally:
        await client.aclose()
        sync.close()
    figures(
        Figures(
            scenario="6 memory pressure (Redis OOM)",
            produced=len(ids),
            completed=done,
            dead_lettered=dead,
            lost=len(ids) - done - dead,
            notes=(
                "maxmemory 24 MiB noeviction, filled to ~2 MiB free, cache budget 512 MiB "
                f"(misconfigured) for a 6 MiB model: dead letters {sorted(reasons)}; "
                f"errors:CacheError={counts.get('errors:CacheError', 0)}; worker processes "
                f"that exited: {exited or 'none'}; cache budget and own-keys-only eviction "
                "checked in-process"
            ),
            duration_s=time.monotonic() - started,
            extra={
                "first dead-letter message": messages[0][:300] if messages else "-",
                "errors": {k: v for k, v in counts.items() if k.startswith("errors")},
            },
        )
    )
    assert done + dead == len(ids)
    assert dead > 0, "no job met the OOM: the scenario did not bite"
    assert counts.get("errors:CacheError", 0) > 0  # the OOM surfaced as a CacheError
    # A retry's final error can be WeightServerError ("not loaded within 5 s") instead: arq
    # cannot start a load while Redis refuses its transactions, and the waiter times out.
    # Never JobError / poison: a job Redis is too full to start fails that attempt with
    # the CacheError that says so (tests/integration/workers/test_admission.py).
    assert {t for t, _ in reasons} <= {"CacheError", "WeightServerError"}, reasons
    assert {r for _, r in reasons} == {"retries_exhausted"}, reasons
    assert all(m for m in messages)
    assert filler_count == fillers  # noeviction: nobody else's key was dropped


async def test_an_oom_while_asking_a_loader_is_a_clear_transient_error(
    small_redis: RedisServer, tmp_path: Path
) -> None:
    """Found by the long run: an OOM answer to the load request (arq's enqueue) reached the
    job as redis' raw OutOfMemoryError -- not a Surfing error, so it was dead-lettered at
    once as permanent, with the binary arq job dump as its message."""
    import redis.asyncio as aioredis

    from sw_core.exceptions import SurfingError, is_transient
    from tests.support.storage import write_chunk_set
    from workers.chunks.chunk_source import RemoteChunkSource

    manifest = write_chunk_set(tmp_path / "tiny", n_chunks=1)
    settings = fast_settings(small_redis.url, CHAOS, timeout_seconds=2)
    client = aioredis.Redis.from_url(small_redis.url)
    source = RemoteChunkSource("tiny", settings, timeout_s=2)
    try:
        await ModelRegistry(client, settings).register("tiny", str(tmp_path / "tiny"))
        await client.config_set("maxmemory", 1)  # over the limit: every write is refused
        with pytest.raises(SurfingError) as caught:
            await source.fetch(manifest.chunks[0])
    finally:
        await client.config_set("maxmemory", 24 * MIB)
        await source.close()
        await client.aclose()
    assert is_transient(caught.value), repr(caught.value)
    assert "out of memory" in str(caught.value), str(caught.value)
    assert "\ufffd" not in str(caught.value) and len(str(caught.value)) < 600

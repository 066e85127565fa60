"""ChunkCache under faults: a writer SIGKILLed mid-put, Redis out of memory, Redis unreachable."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from sw_core.cache import ChunkCache
from sw_core.exceptions import CacheError, is_transient
from sw_core.keys import Keys
from sw_core.local.redis_server import RedisServer, free_port
from tests.support.waiting import wait_until_sync

MIB = 1 << 20
REPO_ROOT = Path(__file__).resolve().parents[3]

#: A writer that stages its parts, then hangs where the commit would run (and gets killed).
WRITER = """
import hashlib, random, sys, time
import redis
from sw_core.cache import ChunkCache
from sw_core.keys import Keys

url, size, ttl_ms = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = random.Random(99).randbytes(size)
cache = ChunkCache(redis.Redis.from_url(url), keys=Keys("sw"), cache_size_bytes=64 << 20,
                   part_size_bytes=1 << 20, staging_ttl_ms=ttl_ms)

def hang(*args, **kwargs):
    print("staged", flush=True)
    time.sleep(120)

cache._commit = hang
cache.put(hashlib.sha256(data).hexdigest(), data)
"""


def chunk(size_bytes: int, seed: int) -> tuple[str, bytes]:
    data = random.Random(seed).randbytes(size_bytes)
    return hashlib.sha256(data).hexdigest(), data


def test_writer_killed_between_staging_and_commit_leaves_nothing(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    cache = ChunkCache(client, keys=Keys("sw"), cache_size_bytes=64 * MIB, part_size_bytes=MIB)
    kept_id, kept = chunk(MIB, seed=1)
    cache.put(kept_id, kept)
    size = 3 * MIB + 5
    chunk_id, data = chunk(size, seed=99)
    assert hashlib.sha256(random.Random(99).randbytes(size)).hexdigest() == chunk_id

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, redis_url, str(size), "2000"],
        stdout=subprocess.PIPE,
        env=env,
        cwd=REPO_ROOT,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"staged"
        staged = sorted(client.scan_iter(match="sw:cache:*:staging:*"))
        assert len(staged) == 4
        assert all(0 < client.pttl(k) <= 2000 for k in staged)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    # Nothing of the chunk is visible, and the accounting did not move.
    assert not cache.contains(chunk_id)
    assert cache.get(chunk_id) is None
    assert cache.info().used_bytes == MIB and cache.info().chunks == 1
    permanent = [k for k in client.scan_iter(match="sw:*") if client.ttl(k) == -1]
    expected = (
        cache.keys.cache_part(kept_id, 0),
        cache.keys.cache_info(kept_id),
        cache.keys.cache_lru,
        cache.keys.cache_meta,
        cache.keys.cache_freq,  # the counted lookup of the get above
    )
    assert sorted(permanent) == sorted(k.encode() for k in expected)
    wait_until_sync(
        lambda: not list(client.scan_iter(match="sw:cache:*:staging:*")), 10, "staging keys to go"
    )
    assert not list(client.scan_iter(match="sw:cache:*:staging:*"))

    # The next writer stores it normally, with exact accounting.
    assert cache.put(chunk_id, data) is True
    got = cache.get(chunk_id)
    assert got is not None and bytes(got) == data
    assert cache.info().used_bytes == MIB + size
    cache.close()
    client.close()


def test_out_of_memory_redis_fails_put_cleanly() -> None:
    with RedisServer(maxmemory_mb=12, maxmemory_policy="noeviction") as server:
        client = redis.Redis.from_url(server.url)
        client.set("unrelated:string", b"keep me")
        cache = ChunkCache(client, keys=Keys("sw"), cache_size_bytes=256 * MIB, part_size_bytes=MIB)
        chunk_id, data = chunk(32 * MIB, seed=2)

        with pytest.raises(CacheError, match="out of memory") as caught:
            cache.put(chunk_id, data)
        assert "maxmemory" in str(caught.value)
        assert not cache.contains(chunk_id)
        assert cache.get(chunk_id) is None
        assert not list(client.scan_iter(match="sw:cache:*:staging:*"))
        assert not list(client.scan_iter(match="sw:cache:*:part:*"))
        assert cache.info().used_bytes == 0
        assert client.get("unrelated:string") == b"keep me"

        # The staged parts were removed, so the memory is back: a smaller chunk fits.
        small_id, small = chunk(2 * MIB, seed=3)
        assert cache.put(small_id, small) is True
        got = cache.get(small_id)
        assert got is not None and bytes(got) == small
        cache.close()
        client.close()


def test_reads_keep_working_when_redis_is_full() -> None:
    """At maxmemory (noeviction) the LRU bump is refused; the read must still succeed."""
    with RedisServer(maxmemory_mb=64, maxmemory_policy="noeviction") as server:
        client = redis.Redis.from_url(server.url)
        cache = ChunkCache(client, keys=Keys("sw"), cache_size_bytes=64 * MIB, part_size_bytes=MIB)
        chunk_id, data = chunk(2 * MIB, seed=4)
        cache.put(chunk_id, data)
        bad_id, bad = chunk(MIB, seed=6)
        cache.put(bad_id, bad)
        client.setrange(cache.keys.cache_part(bad_id, 0), 5, b"!")
        client.config_set("maxmemory", "1mb")  # now well over the limit: every write refused
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            client.set("filler", b"f")
        clock = client.hget(cache.keys.cache_meta, "clock")
        got = cache.get(chunk_id)
        assert got is not None and bytes(got) == data
        # Redis refused the bump (so it really was full), and the read did not care.
        assert client.hget(cache.keys.cache_meta, "clock") == clock
        with pytest.raises(CacheError, match="out of memory"):
            cache.put(*chunk(2 * MIB, seed=5))
        assert cache.info().chunks == 2
        # A corrupt entry found while Redis is full is still dropped, bytes and all.
        assert cache.get(bad_id) is None
        info = cache.info()
        assert (info.chunks, info.used_bytes) == (1, len(data))
        cache.close()
        client.close()


def test_unreachable_redis_is_a_transient_cache_error() -> None:
    client = redis.Redis(port=free_port(), socket_connect_timeout=1)
    cache = ChunkCache(client, keys=Keys("sw"), cache_size_bytes=8 * MIB)
    chunk_id, data = chunk(1000, seed=7)
    for call in (lambda: cache.get(chunk_id), lambda: cache.put(chunk_id, data), cache.info):
        with pytest.raises(CacheError, match="chunk cache Redis error") as caught:
            call()
        assert is_transient(caught.value)

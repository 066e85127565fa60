"""ChunkCache.lookup with ``verify_later``: a hit's bytes come unhashed with a check that the
caller runs before use; a mismatch then drops the entry and counts as the inline check
does (real Redis)."""

from __future__ import annotations

import blake3
import pytest
import redis

from sw_core import counters as stats
from sw_core.cache import ChunkCache
from tests.support.cache import MIB, chunk, make_cache


@pytest.fixture
def client(redis_url: str):
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    yield client
    client.close()


def flip(client: redis.Redis, cache: ChunkCache, chunk_id: str, part: int) -> None:
    key = cache.keys.cache_part(chunk_id, part)
    client.setrange(key, 1, bytes([client.getrange(key, 1, 1)[0] ^ 0x01]))


@pytest.mark.parametrize("size", [MIB - 1, 2 * MIB + 3])
def test_a_hit_comes_with_a_check_that_passes(client: redis.Redis, size: int) -> None:
    cache = make_cache(client, 64 * MIB)
    chunk_id, data = chunk(size, seed=41)
    cache.put(chunk_id, data)
    out = memoryview(bytearray(size))
    found = cache.lookup(
        chunk_id, size, out=out, blake3=blake3.blake3(data).hexdigest(), verify_later=True
    )
    assert found.data is not None and bytes(found.data) == data
    assert found.check is not None and found.check()
    assert cache.contains(chunk_id)
    info = cache.info()
    assert (info.hits, info.misses, info.corruptions) == (1, 0, 0)


@pytest.mark.parametrize("part", [0, 2])
def test_a_flipped_byte_fails_the_check_and_drops_the_entry(client: redis.Redis, part: int) -> None:
    cache = make_cache(client, 64 * MIB)
    chunk_id, data = chunk(2 * MIB + 3, seed=42)
    cache.put(chunk_id, data)
    flip(client, cache, chunk_id, part)
    out = memoryview(bytearray(len(data)))
    found = cache.lookup(chunk_id, len(data), out=out, verify_later=True)
    assert found.data is not None and bytes(found.data) != data  # handed over unhashed
    assert cache.contains(chunk_id)
    assert found.check is not None and not found.check()
    assert not cache.contains(chunk_id)
    info = cache.info()
    assert (info.hits, info.misses, info.corruptions) == (0, 1, 1)  # the hit became a miss
    counters = cache.counters
    assert counters is not None
    assert counters.get(stats.CACHE_HITS) == 0
    assert (counters.get(stats.CACHE_MISSES), counters.get(stats.CACHE_CORRUPTIONS)) == (1, 1)


def test_the_inline_check_still_refuses_without_verify_later(client: redis.Redis) -> None:
    cache = make_cache(client, 64 * MIB)
    chunk_id, data = chunk(MIB + 9, seed=43)
    cache.put(chunk_id, data)
    found = cache.lookup(chunk_id, len(data), out=memoryview(bytearray(len(data))))
    assert found.check is None and found.data is not None
    flip(client, cache, chunk_id, 0)
    again = cache.lookup(chunk_id, len(data), out=memoryview(bytearray(len(data))))
    assert again.data is None and again.check is None
    assert cache.info().corruptions == 1


def test_a_miss_has_no_check(client: redis.Redis) -> None:
    cache = make_cache(client, 64 * MIB)
    chunk_id, data = chunk(MIB, seed=44)
    found = cache.lookup(chunk_id, len(data), out=memoryview(bytearray(MIB)), verify_later=True)
    assert found.data is None and found.check is None and found.admit

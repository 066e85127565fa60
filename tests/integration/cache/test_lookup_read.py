"""ChunkCache.lookup with the caller's buffer (real Redis): part 0 read in the lookup script's
round trip, whatever the entry's layout or state; with ``verify_later``, a hit's bytes come
unhashed with a check the caller runs before use, and a mismatch then drops the entry and
counts as the inline check does."""

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
    """Flip a bit of the cached part ``part`` of the chunk (its second byte)."""
    key = cache.keys.cache_part(chunk_id, part)
    client.setrange(key, 1, bytes([client.getrange(key, 1, 1)[0] ^ 0x01]))


def lookup(cache: ChunkCache, chunk_id: str, size: int) -> bytes | None:
    out = memoryview(bytearray(size + 10))
    found = cache.lookup(chunk_id, size, out=out)
    return None if found.data is None else bytes(found.data)


@pytest.mark.parametrize("size", [1, MIB - 1, MIB, 3 * MIB + 5])
def test_entries_of_one_or_many_parts_are_read_whole(client: redis.Redis, size: int) -> None:
    cache = make_cache(client, 64 * MIB)
    chunk_id, data = chunk(size, seed=size)
    cache.put(chunk_id, data)
    assert lookup(cache, chunk_id, size) == data
    info = cache.info()
    assert (info.hits, info.misses, info.corruptions) == (1, 0, 0)


def test_an_entry_written_with_another_part_size_is_read_whole(client: redis.Redis) -> None:
    writer = make_cache(client, 64 * MIB, part_bytes=MIB)
    reader = make_cache(client, 64 * MIB, part_bytes=4 * MIB)
    chunk_id, data = chunk(2 * MIB + 7, seed=31)
    writer.put(chunk_id, data)
    assert lookup(reader, chunk_id, len(data)) == data
    other_id, other = chunk(5 * MIB, seed=32)
    reader.put(other_id, other)
    assert lookup(writer, other_id, len(other)) == other
    assert reader.info().corruptions == 0


@pytest.mark.parametrize("part", [0, 1])
def test_a_flipped_byte_in_any_part_is_a_corruption(client: redis.Redis, part: int) -> None:
    cache = make_cache(client, 64 * MIB)
    chunk_id, data = chunk(2 * MIB + 3, seed=33)
    cache.put(chunk_id, data)
    flip(client, cache, chunk_id, part)
    assert lookup(cache, chunk_id, len(data)) is None
    assert not cache.contains(chunk_id)
    assert cache.info().corruptions == 1


def test_a_missing_first_part_is_a_miss_that_drops_the_entry(client: redis.Redis) -> None:
    cache = make_cache(client, 64 * MIB)
    chunk_id, data = chunk(2 * MIB, seed=34)
    cache.put(chunk_id, data)
    client.delete(cache.keys.cache_part(chunk_id, 0))
    found = cache.lookup(chunk_id, len(data), out=memoryview(bytearray(len(data))))
    assert found.data is None and found.admit
    assert not cache.contains(chunk_id)
    assert (cache.info().misses, cache.info().corruptions) == (1, 0)


def test_a_miss_gives_the_admission_verdict(client: redis.Redis) -> None:
    cache = make_cache(client, 2 * MIB)
    absent_id, _ = chunk(MIB, seed=35)
    found = cache.lookup(absent_id, MIB, out=memoryview(bytearray(MIB)))
    assert found.data is None and found.admit
    too_big = cache.lookup(absent_id, 3 * MIB, out=memoryview(bytearray(3 * MIB)))
    assert too_big.data is None and not too_big.admit
    assert cache.info().misses == 2


def test_a_flushed_script_is_loaded_again(client: redis.Redis) -> None:
    cache = make_cache(client, 64 * MIB)
    chunk_id, data = chunk(MIB + 1, seed=36)
    cache.put(chunk_id, data)
    client.script_flush()
    assert lookup(cache, chunk_id, len(data)) == data
    assert lookup(cache, chunk_id, len(data)) == data
    assert cache.info().hits == 2


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

"""ChunkCache.lookup with the caller's buffer: part 0 read in the lookup script's round trip
(real Redis), whatever the entry's layout or state."""

from __future__ import annotations

import pytest
import redis

from sw_core.cache import ChunkCache
from tests.support.cache import MIB, chunk, make_cache


@pytest.fixture
def client(redis_url: str):
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    yield client
    client.close()


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
    key = cache.keys.cache_part(chunk_id, part)
    client.setrange(key, 9, bytes([client.getrange(key, 9, 9)[0] ^ 0x01]))
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

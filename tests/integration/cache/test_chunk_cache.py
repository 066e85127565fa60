"""ChunkCache against the real Redis: round trips, LRU order, budget, corruption, isolation."""

from __future__ import annotations

import random
from collections import OrderedDict

import pytest
import redis

from sw_core import counters as stats
from sw_core.cache import CacheInfo, ChunkCache
from sw_core.counters import Counters
from sw_core.exceptions import CacheError, ChunkTooLargeError, SecurityError, is_transient
from sw_core.keys import Keys
from sw_core.settings import Settings
from tests.support.cache import MIB, chunk, make_cache


@pytest.fixture
def client(redis_url: str):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def stored_part_bytes(client: redis.Redis, keys: Keys) -> int:
    return sum(client.strlen(k) for k in client.scan_iter(match=f"{keys.cache_part_prefix}*"))


def add_unrelated_keys(client: redis.Redis) -> dict[str, object]:
    """A stream with entries, a plain string and a hash that the cache must never touch."""
    client.xadd("sw:jobs", {"payload": b"x" * 100})
    client.xadd("sw:jobs", {"payload": b"y"})
    client.set("unrelated:string", b"keep me")
    client.hset("unrelated:hash", mapping={"a": "1", "b": "2"})
    return snapshot_unrelated(client)


def snapshot_unrelated(client: redis.Redis) -> dict[str, object]:
    return {
        "stream": client.xrange("sw:jobs"),
        "string": client.get("unrelated:string"),
        "hash": client.hgetall("unrelated:hash"),
    }


def test_round_trip_multi_part_under_keys_named_by_keys(client: redis.Redis) -> None:
    cache = make_cache(client, 64 * MIB)
    chunk_id, data = chunk(3 * MIB + 12_345, seed=1)  # 4 parts, the last one short

    assert cache.put(chunk_id, data) is True
    keys = cache.keys
    assert [client.strlen(keys.cache_part(chunk_id, n)) for n in range(4)] == [MIB] * 3 + [12_345]
    assert client.hgetall(keys.cache_info(chunk_id)) == {
        b"parts": b"4",
        b"size_bytes": str(len(data)).encode(),
        b"part_bytes": str(MIB).encode(),
    }
    assert cache.info().used_bytes == len(data) == stored_part_bytes(client, keys)
    assert not list(client.scan_iter(match="sw:cache:*:staging:*"))
    assert all(client.ttl(k) == -1 for k in client.scan_iter(match="sw:cache:*"))

    got = cache.get(chunk_id)
    assert got is not None and bytes(got) == data
    assert not got.readonly  # tensors can be made over it without a copy
    got[0] ^= 0xFF
    assert cache.info().hits == 1 and cache.counters.get(stats.CACHE_HITS) == 1
    cache.close()


@pytest.mark.parametrize("size_bytes", [0, 1, MIB, MIB + 1])
def test_edge_sizes_round_trip(client: redis.Redis, size_bytes: int) -> None:
    cache = make_cache(client, 8 * MIB)
    chunk_id, data = chunk(size_bytes, seed=size_bytes)
    assert cache.put(chunk_id, data)
    got = cache.get(chunk_id)
    assert got is not None and bytes(got) == data
    assert cache.info().used_bytes == size_bytes


def test_get_into_caller_buffer(client: redis.Redis) -> None:
    cache = make_cache(client, 16 * MIB)
    chunk_id, data = chunk(2 * MIB + 7, seed=2)
    cache.put(chunk_id, data)
    out = bytearray(3 * MIB)
    got = cache.get(chunk_id, out=out)
    assert got is not None and got.obj is out and bytes(got) == data
    with pytest.raises(ValueError, match="at least"):
        cache.get(chunk_id, out=bytearray(MIB))
    with pytest.raises(ValueError, match="writable"):
        cache.get(chunk_id, out=memoryview(bytes(3 * MIB)))


def test_identical_chunks_share_one_entry(client: redis.Redis) -> None:
    cache = make_cache(client, 16 * MIB)
    chunk_id, data = chunk(MIB + 5, seed=3)
    assert cache.put(chunk_id, data) is True
    assert cache.put(chunk_id, bytearray(data)) is False  # a second model with the same chunk
    info = cache.info()
    assert (info.chunks, info.used_bytes) == (1, len(data))
    assert not list(client.scan_iter(match="sw:cache:*:staging:*"))


def test_lru_order_put_abc_get_a_put_d_evicts_b(client: redis.Redis) -> None:
    a, b, c, d = (chunk(MIB, seed=10 + i) for i in range(4))
    cache = make_cache(client, 3 * MIB, part_bytes=512 << 10)
    for chunk_id, data in (a, b, c):
        assert cache.put(chunk_id, data)
    assert cache.get(a[0]) is not None
    assert cache.put(*d)

    assert [cache.contains(x[0]) for x in (a, b, c, d)] == [True, False, True, True]
    assert not client.exists(cache.keys.cache_part(b[0], 0), cache.keys.cache_info(b[0]))
    info = cache.info()
    assert (info.used_bytes, info.chunks, info.evictions) == (3 * MIB, 3, 1)
    assert cache.counters.get(stats.CACHE_EVICTIONS) == 1
    # C is now the least recently used one.
    e = chunk(MIB, seed=20)
    cache.put(*e)
    assert not cache.contains(c[0]) and cache.contains(a[0])


def test_lru_matches_a_reference_model(client: redis.Redis) -> None:
    """Random puts/gets/deletes; after each, Redis' LRU order and bytes equal a Python model."""
    rng = random.Random(42)
    pool = [chunk(rng.randint(1, 9) * 1000 + rng.randint(0, 999), seed=100 + i) for i in range(14)]
    budget = 30_000
    cache = make_cache(client, budget, part_bytes=4096)
    model: OrderedDict[str, int] = OrderedDict()
    hits = misses = evictions = 0
    for _ in range(300):
        chunk_id, data = rng.choice(pool)
        op = rng.random()
        if op < 0.5:
            stored = cache.put(chunk_id, data)
            assert stored == (chunk_id not in model)
            if chunk_id in model:
                model.move_to_end(chunk_id)
            else:
                while sum(model.values()) + len(data) > budget:
                    model.popitem(last=False)
                    evictions += 1
                model[chunk_id] = len(data)
        elif op < 0.9:
            got = cache.get(chunk_id)
            if chunk_id in model:
                assert got is not None and bytes(got) == data
                model.move_to_end(chunk_id)
                hits += 1
            else:
                assert got is None
                misses += 1
        else:
            assert cache.delete(chunk_id) == (chunk_id in model)
            model.pop(chunk_id, None)
        lru = [m.decode() for m in client.zrange(cache.keys.cache_lru, 0, -1)]
        assert lru == list(model)
        assert (
            cache.info().used_bytes == sum(model.values()) == stored_part_bytes(client, cache.keys)
        )
    info = cache.info()
    assert (info.hits, info.misses, info.evictions) == (hits, misses, evictions)
    snapshot = cache.counters.snapshot()
    assert snapshot.get(stats.CACHE_HITS, 0) == hits
    assert snapshot.get(stats.CACHE_MISSES, 0) == misses
    assert snapshot.get(stats.CACHE_EVICTIONS, 0) == evictions


def test_chunk_larger_than_budget_fails_fast_and_stores_nothing(client: redis.Redis) -> None:
    cache = make_cache(client, 20 * MIB)
    chunk_id, data = chunk(21 * MIB, seed=4)
    sets_before = client.info("commandstats").get("cmdstat_set", {}).get("calls", 0)
    with pytest.raises(ChunkTooLargeError) as caught:
        cache.put(chunk_id, data)
    assert isinstance(caught.value, CacheError) and not is_transient(caught.value)
    message = str(caught.value)
    assert "21.0 MiB" in message and "cache_size_mb=20" in message and "SW_CACHE_SIZE_MB" in message
    assert client.info("commandstats").get("cmdstat_set", {}).get("calls", 0) == sets_before
    assert client.dbsize() == 0


def test_commit_script_refuses_too_large_and_drops_staging(client: redis.Redis) -> None:
    """Second line of defence: the Lua commit checks the budget too (all or nothing)."""
    cache = make_cache(client, 2 * MIB)
    chunk_id, data = chunk(3 * MIB, seed=5)
    staged = [cache.keys.cache_staging("t", n) for n in range(3)]
    for n, key in enumerate(staged):
        client.set(key, data[n * MIB : (n + 1) * MIB], px=60_000)
    with pytest.raises(redis.ResponseError, match="SWCACHE_TOO_LARGE"):
        cache._commit(
            keys=[*cache._clients.entry_keys(chunk_id), *staged],
            args=[chunk_id, len(data), 2 * MIB, MIB, "sw:cache:info:", "sw:cache:part:"],
        )
    assert client.dbsize() == 0


def test_corrupted_byte_is_detected_dropped_and_counted(client: redis.Redis) -> None:
    cache = make_cache(client, 16 * MIB)
    chunk_id, data = chunk(3 * MIB, seed=6)
    other_id, other = chunk(MIB, seed=7)
    cache.put(chunk_id, data)
    cache.put(other_id, other)
    part = cache.keys.cache_part(chunk_id, 1)
    flipped = bytes([client.getrange(part, 777, 777)[0] ^ 0x01])
    client.setrange(part, 777, flipped)

    assert cache.get(chunk_id) is None
    assert not cache.contains(chunk_id)
    assert not client.exists(*(cache.keys.cache_part(chunk_id, n) for n in range(3)))
    info = cache.info()
    assert (info.corruptions, info.hits, info.misses, info.chunks) == (1, 0, 1, 1)
    assert info.used_bytes == len(other) == stored_part_bytes(client, cache.keys)
    assert cache.counters.get(stats.CACHE_CORRUPTIONS) == 1
    assert cache.counters.get(stats.CACHE_MISSES) == 1
    # The caller reloads it; the fresh copy is served.
    assert cache.put(chunk_id, data) is True
    got = cache.get(chunk_id)
    assert got is not None and bytes(got) == data


def test_uncounted_reads_leave_hits_and_misses_alone(client: redis.Redis) -> None:
    """``count=False`` (the read after a load already counted as a miss) moves neither the
    Redis counters nor the process counters; a corruption it finds is still counted."""
    cache = make_cache(client, 16 * MIB)
    chunk_id, data = chunk(2 * MIB, seed=16)
    absent_id, _ = chunk(MIB, seed=17)
    assert cache.get(absent_id, count=False) is None
    cache.put(chunk_id, data)
    got = cache.get(chunk_id, count=False)
    assert got is not None and bytes(got) == data
    info = cache.info()
    assert (info.hits, info.misses) == (0, 0)
    assert cache.counters.get(stats.CACHE_HITS) == cache.counters.get(stats.CACHE_MISSES) == 0

    part = cache.keys.cache_part(chunk_id, 0)
    client.setrange(part, 5, bytes([client.getrange(part, 5, 5)[0] ^ 0x01]))
    assert cache.get(chunk_id, count=False) is None
    info = cache.info()
    assert (info.hits, info.misses, info.corruptions, info.chunks) == (0, 0, 1, 0)
    assert cache.counters.get(stats.CACHE_CORRUPTIONS) == 1
    assert cache.counters.get(stats.CACHE_MISSES) == 0


def test_part_of_wrong_length_is_a_corruption(client: redis.Redis) -> None:
    cache = make_cache(client, 16 * MIB)
    chunk_id, data = chunk(2 * MIB, seed=8)
    cache.put(chunk_id, data)
    client.append(cache.keys.cache_part(chunk_id, 0), b"extra")
    assert cache.get(chunk_id) is None
    assert cache.info().corruptions == 1 and cache.info().used_bytes == 0


def test_missing_part_is_a_miss_and_drops_the_entry(client: redis.Redis) -> None:
    cache = make_cache(client, 16 * MIB)
    chunk_id, data = chunk(2 * MIB + 1, seed=9)
    cache.put(chunk_id, data)
    client.delete(cache.keys.cache_part(chunk_id, 2))
    assert cache.get(chunk_id) is None
    info = cache.info()
    assert (info.chunks, info.used_bytes, info.misses, info.hits, info.corruptions) == (
        0,
        0,
        1,
        0,
        0,
    )
    # only the meta hash and the use counts (a counted lookup) are left
    assert sorted(client.keys()) == sorted(
        k.encode() for k in (cache.keys.cache_meta, cache.keys.cache_freq)
    )


def test_put_refuses_bytes_that_do_not_match_the_id(client: redis.Redis) -> None:
    cache = make_cache(client, 16 * MIB)
    chunk_id, data = chunk(2 * MIB, seed=11)
    tampered = bytearray(data)
    tampered[-1] ^= 1
    with pytest.raises(SecurityError, match="not to its id"):
        cache.put(chunk_id, tampered)
    small_id, small = chunk(100, seed=12)
    with pytest.raises(SecurityError):
        cache.put(small_id, small + b"!")
    assert client.dbsize() == 0
    assert cache.counters.get(stats.INTEGRITY_FAILURES) == 2


def test_delete_contains_and_missing_get(client: redis.Redis) -> None:
    cache = make_cache(client, 16 * MIB)
    chunk_id, data = chunk(MIB + 3, seed=13)
    assert not cache.contains(chunk_id) and cache.get(chunk_id) is None
    cache.put(chunk_id, data)
    assert cache.contains(chunk_id)
    assert cache.delete(chunk_id) is True
    assert cache.delete(chunk_id) is False
    info = cache.info()
    assert (info.chunks, info.used_bytes, info.misses) == (0, 0, 1)
    left = {cache.keys.cache_meta.encode(), cache.keys.cache_freq.encode()}
    assert set(client.keys("sw:cache:*")) == left


def test_clear_removes_only_its_own_keys(client: redis.Redis) -> None:
    before = add_unrelated_keys(client)
    other = ChunkCache(client, keys=Keys("other"), cache_size_bytes=8 * MIB)
    other_id, other_data = chunk(MIB, seed=14)
    other.put(other_id, other_data)
    cache = make_cache(client, 16 * MIB)
    for seed in range(3):
        cache.put(*chunk(MIB + seed, seed=20 + seed))
    cache.get(chunk(MIB, seed=20)[0])

    cache.clear()
    assert cache.info() == CacheInfo(0, 16 * MIB, 0, 0, 0, 0, 0)
    assert client.keys("sw:cache:*") == []
    assert snapshot_unrelated(client) == before
    got = other.get(other_id)
    assert got is not None and bytes(got) == other_data


def test_from_settings(redis_url: str) -> None:
    settings = Settings.from_env({}, redis_url=redis_url, key_prefix="t1", cache_size_mb=3)
    settings = settings.replace(cache_part_mb=1)
    with ChunkCache.from_settings(settings, counters=Counters()) as cache:
        assert (cache.budget_bytes, cache.part_size_bytes) == (3 * MIB, MIB)
        chunk_id, data = chunk(2 * MIB + 1, seed=15)
        cache.put(chunk_id, data)
        assert cache.redis.exists(Keys("t1").cache_part(chunk_id, 2))
        with pytest.raises(ChunkTooLargeError):
            cache.put(*chunk(4 * MIB, seed=16))


async def test_async_wrappers(client: redis.Redis) -> None:
    cache = make_cache(client, 16 * MIB)
    chunk_id, data = chunk(MIB + 9, seed=17)
    assert await cache.aput(chunk_id, data) is True
    assert await cache.acontains(chunk_id)
    got = await cache.aget(chunk_id)
    assert got is not None and bytes(got) == data
    assert (await cache.ainfo()).hits == 1
    assert await cache.adelete(chunk_id)
    await cache.aput(chunk_id, data)
    await cache.aclear()
    assert not await cache.acontains(chunk_id)


def test_scripts_reload_after_script_flush(client: redis.Redis) -> None:
    cache = make_cache(client, 16 * MIB)
    chunk_id, data = chunk(MIB, seed=18)
    cache.put(chunk_id, data)
    client.script_flush()
    got = cache.get(chunk_id)
    assert got is not None and bytes(got) == data

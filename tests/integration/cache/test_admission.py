"""The cache's admission policy in the real Lua against a real Redis: a sweep larger than the
cache keeps a stable part cached, a one-off read evicts nothing from a full cache, a model
used more often takes the place of one used less, and the use counts age."""

from __future__ import annotations

import hashlib

import pytest
import redis

from sw_core.cache import ChunkCache
from sw_core.cache.admission import AGING_WINDOW_MIN
from sw_core.counters import Counters
from sw_core.keys import Keys

KIB = 1 << 10
#: Every chunk is 64 KiB; the cache holds 16 of them.
CHUNK_BYTES = 64 * KIB
CAPACITY = 16


def model(name: str, n_chunks: int) -> list[tuple[str, bytes]]:
    """``n_chunks`` distinct chunks of one model, in sweep order."""
    out = []
    for i in range(n_chunks):
        data = hashlib.sha256(f"{name}/{i}".encode()).digest() * (CHUNK_BYTES // 32)
        out.append((hashlib.sha256(data).hexdigest(), data))
    return out


@pytest.fixture
def cache(redis_url: str):
    client = redis.Redis.from_url(redis_url)
    yield ChunkCache(
        client,
        keys=Keys("sw"),
        cache_size_bytes=CAPACITY * CHUNK_BYTES,
        part_size_bytes=CHUNK_BYTES,
        counters=Counters(),
    )
    client.close()


def sweep(cache: ChunkCache, chunks: list[tuple[str, bytes]]) -> int:
    """Read every chunk as a reader does (put the admitted misses); the hits."""
    hits = 0
    for chunk_id, data in chunks:
        found = cache.lookup(chunk_id, len(data))
        if found.hit:
            assert bytes(found.data or b"") == data
            hits += 1
        elif found.admit:
            cache.put(chunk_id, data)
    return hits


def cached(cache: ChunkCache, chunks: list[tuple[str, bytes]]) -> int:
    return sum(cache.contains(chunk_id) for chunk_id, _ in chunks)


def test_a_sweep_twice_the_cache_hits_half_of_it_from_the_second_sweep_on(
    cache: ChunkCache,
) -> None:
    big = model("big", 2 * CAPACITY)
    assert sweep(cache, big) == 0
    # the first half got in and stays; the second half is refused every time
    assert [sweep(cache, big) for _ in range(6)] == [CAPACITY] * 6
    assert all(cache.contains(chunk_id) for chunk_id, _ in big[:CAPACITY])
    info = cache.info()
    assert info.evictions == 0 and info.refusals == 7 * CAPACITY, info


def test_plain_puts_still_evict_least_recently_used(cache: ChunkCache) -> None:
    """``put`` without a lookup (a loader told to load) stores, as before."""
    chunks = model("m", CAPACITY + 2)
    for chunk_id, data in chunks:
        cache.put(chunk_id, data)
    assert cached(cache, chunks[:2]) == 0 and cached(cache, chunks[2:]) == CAPACITY
    assert cache.info().evictions == 2


def test_a_one_off_read_of_another_model_evicts_nothing(cache: ChunkCache) -> None:
    hot = model("hot", CAPACITY)
    for _ in range(3):
        sweep(cache, hot)
    assert sweep(cache, model("once", 3 * CAPACITY)) == 0
    assert sweep(cache, hot) == CAPACITY
    assert cache.info().evictions == 0


def test_a_hot_model_keeps_its_place_while_a_big_one_sweeps(cache: ChunkCache) -> None:
    hot, big = model("hot", CAPACITY // 4), model("big", 2 * CAPACITY)
    sweep(cache, hot)
    hits = []
    for _ in range(5):  # used as often as the big model's sweeps
        hits.append((sweep(cache, hot), sweep(cache, big)))
    # the hot model hits every time; the big one gets the rest of the cache
    assert hits[1:] == [(CAPACITY // 4, CAPACITY - CAPACITY // 4)] * 4, hits


def test_a_model_used_more_often_takes_the_place_of_one_used_less(cache: ChunkCache) -> None:
    old, new = model("old", CAPACITY), model("new", CAPACITY // 2)
    for _ in range(3):
        sweep(cache, old)
    hits = []
    for _ in range(6):  # the new model now runs four times for each sweep of the old one
        hits.append(sum(sweep(cache, new) for _ in range(4)))
        sweep(cache, old)
    assert hits[0] < 4 * len(new) and hits[-1] == 4 * len(new), hits
    assert cached(cache, new) == len(new)


def test_use_counts_are_halved_every_window(cache: ChunkCache) -> None:
    client, keys = cache.redis, Keys("sw")
    chunks = model("m", 4)
    for _ in range(8):
        sweep(cache, chunks)
    counts = {k: int(v) for k, v in client.hgetall(keys.cache_freq).items()}
    assert sorted(counts.values()) == [8, 8, 8, 8]
    # a window of counted lookups of other ids halves them (and drops ids that reach 0)
    others = model("other", AGING_WINDOW_MIN)
    for chunk_id, data in others:
        cache.lookup(chunk_id, len(data))
    counts = {k.decode(): int(v) for k, v in client.hgetall(keys.cache_freq).items()}
    assert all(counts[chunk_id] == 4 for chunk_id, _ in chunks), counts
    assert len(counts) <= len(chunks) + AGING_WINDOW_MIN


def test_uncounted_reads_do_not_count_uses(cache: ChunkCache) -> None:
    [(chunk_id, data)] = model("m", 1)
    cache.put(chunk_id, data)
    for _ in range(3):
        assert cache.get(chunk_id, count=False) is not None
        assert cache.contains(chunk_id)
    assert cache.redis.hget(Keys("sw").cache_freq, chunk_id) is None
    assert cache.info().hits == 0

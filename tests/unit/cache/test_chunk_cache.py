"""Cache pieces that need no Redis: argument checks, fail-fast paths, ordered hashing, buffers."""

from __future__ import annotations

import hashlib
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from sw_core.cache import ChunkCache, allocate_buffer
from sw_core.cache.ordered_hash import OrderedHash
from sw_core.exceptions import ChunkTooLargeError, ConfigError
from sw_core.keys import Keys
from sw_core.local.redis_server import free_port


def offline_client() -> redis.Redis:
    """A client for a port nobody listens on: any command it sends fails."""
    return redis.Redis(port=free_port(), socket_connect_timeout=0.5)


def test_rejects_decoding_clients_and_bad_sizes() -> None:
    with pytest.raises(ConfigError, match="decode_responses"):
        ChunkCache(redis.Redis(decode_responses=True), keys=Keys(), cache_size_bytes=1)
    for bad in ({"cache_size_bytes": 0}, {"cache_size_bytes": 1, "part_size_bytes": 0}):
        with pytest.raises(ConfigError, match="must be > 0"):
            ChunkCache(offline_client(), keys=Keys(), **bad)


@pytest.mark.parametrize("bad_id", ["", "abc", "A" * 64, "g" * 64, "0" * 63, "sw:*" + "0" * 60])
def test_chunk_ids_must_be_sha256_hex(bad_id: str) -> None:
    cache = ChunkCache(offline_client(), keys=Keys(), cache_size_bytes=1 << 20)
    for call in (cache.get, cache.contains, cache.delete, lambda c: cache.put(c, b"x")):
        with pytest.raises(ValueError, match="sha256"):
            call(bad_id)


def test_too_large_fails_before_any_network_call() -> None:
    cache = ChunkCache(offline_client(), keys=Keys(), cache_size_bytes=1 << 20)
    data = b"\0" * ((1 << 20) + 1)
    with pytest.raises(ChunkTooLargeError, match=r"cache_size_mb=1\b.*at least 2"):
        cache.put(hashlib.sha256(data).hexdigest(), data)


def test_ordered_hash_matches_hashlib_whatever_the_pieces() -> None:
    rng = random.Random(3)
    data = rng.randbytes(3_000_000)
    with ThreadPoolExecutor(2) as pool:
        for _ in range(20):
            cuts = sorted(rng.sample(range(1, len(data)), rng.randint(0, 30)))
            digest = OrderedHash(pool)
            view = memoryview(data)
            for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
                digest.feed(view[start:end])
            assert digest.hexdigest() == hashlib.sha256(data).hexdigest()


def test_concurrent_ordered_hashes_share_a_pool_without_mixing() -> None:
    blobs = [random.Random(i).randbytes(500_000 + i) for i in range(8)]
    results: dict[int, str] = {}
    with ThreadPoolExecutor(2) as pool:

        def run(i: int) -> None:
            digest = OrderedHash(pool)
            view = memoryview(blobs[i])
            for start in range(0, len(view), 65_536):
                digest.feed(view[start : start + 65_536])
            results[i] = digest.hexdigest()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert results == {i: hashlib.sha256(b).hexdigest() for i, b in enumerate(blobs)}


def test_abandoned_hash_releases_its_worker() -> None:
    with ThreadPoolExecutor(1) as pool:
        abandoned = OrderedHash(pool)
        abandoned.feed(memoryview(b"x" * 1000))
        abandoned.abandon()
        follower = OrderedHash(pool)  # would wait forever if the first task never ended
        follower.feed(memoryview(b"abc"))
        assert follower.hexdigest() == hashlib.sha256(b"abc").hexdigest()


def test_allocate_buffer_is_writable_and_sized() -> None:
    buffer = allocate_buffer(5 << 20)
    assert buffer.nbytes == 5 << 20 and not buffer.readonly and buffer.format == "B"
    buffer[-3:] = b"end"
    assert bytes(buffer[-3:]) == b"end"
    assert allocate_buffer(0).nbytes == 0

"""One shard vs the sharded chunk cache on one Redis server, measured side by side.

``bench/cache_read.py --shards N`` runs this: the same chunks (``--chunks`` of ``--chunk-mb``
MiB, random bytes) are put in a one-shard cache and in an ``N``-shard cache (another key
prefix) on the same server; then, in interleaved repetitions (the order alternates), each
cache reads every chunk back, sha256-verified, into a reused buffer. Prints the medians
and the ratio one-shard time / sharded time (goal >= 0.95: sharding costs nothing on one
server, where every shard shares the one client).
"""

from __future__ import annotations

import hashlib
import os
import statistics
import time

import redis
from figures import Figure, Profile  # bench/, beside this script

from sw_core.cache import ChunkCache, allocate_buffer
from sw_core.keys import Keys
from sw_core.local.redis_server import RedisServer

PART_BYTES = 4 << 20


def figures(profile: Profile) -> list[Figure]:
    """Figures for ``bench/run.py``: 8 shards vs one."""
    reps = profile.pick(9, 21)
    ratio = compare_shards(8, reps=reps)
    return [
        Figure(
            "cache_shards.sharded_vs_one",
            ratio,
            "x",
            "8 cache shards / one shard on one server, speed",
            goal=">= 0.95",
            note=f"16 chunks of 4 MiB read back sha256-verified, {reps} interleaved rounds",
        )
    ]


def compare_shards(shards: int, *, chunks: int = 16, chunk_mb: int = 4, reps: int = 9) -> float:
    """Print the comparison; returns one-shard time / sharded time (medians)."""
    size_bytes = chunk_mb << 20
    blobs = [os.urandom(size_bytes) for _ in range(chunks)]
    ids = [hashlib.sha256(b).hexdigest() for b in blobs]
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        budget = 2 * chunks * size_bytes * shards  # no shard evicts anything
        caches = {
            "1 shard": ChunkCache(
                client, keys=Keys("one"), cache_size_bytes=budget, part_size_bytes=PART_BYTES
            ),
            f"{shards} shards": ChunkCache(
                client,
                keys=Keys("many"),
                cache_size_bytes=budget,
                part_size_bytes=PART_BYTES,
                shards=shards,
            ),
        }
        for cache in caches.values():
            for chunk_id, blob in zip(ids, blobs, strict=True):
                cache.put(chunk_id, blob)
        sharded = caches[f"{shards} shards"]
        in_use = sum(1 for s in range(shards) if sharded.shard_info(s)[5])
        out = allocate_buffer(size_bytes)

        def read_all(cache: ChunkCache) -> None:
            for chunk_id in ids:
                assert cache.get(chunk_id, out=out) is not None

        names = list(caches)
        for name in names:
            read_all(caches[name])  # warm-up
        times: dict[str, list[float]] = {name: [] for name in names}
        for rep in range(max(reps, 7)):
            for name in names if rep % 2 == 0 else names[::-1]:
                started = time.perf_counter()
                read_all(caches[name])
                times[name].append(time.perf_counter() - started)
        for cache in caches.values():
            cache.close()
        client.close()
    medians = {name: statistics.median(values) for name, values in times.items()}
    total_mb = chunks * size_bytes / 1e6
    print(
        f"\n{chunks} chunks of {chunk_mb} MiB, sha256-verified reads into a reused buffer, "
        f"medians of {max(reps, 7)} interleaved runs; {in_use} of {shards} shards in use"
    )
    for name, median_s in medians.items():
        print(f"{name:12s} {median_s * 1e3:8.1f} ms {total_mb / median_s:8.0f} MB/s")
    ratio = medians["1 shard"] / medians[f"{shards} shards"]
    print(
        f"sharded vs one shard = {ratio:.3f}x (goal >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'})"
    )
    return ratio

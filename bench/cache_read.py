"""Read speed of the chunk cache against raw redis-py GETs, measured side by side.

Starts its own Redis (``sw_core.local.redis_server``), writes one 48 MiB chunk through
:class:`~sw_core.cache.ChunkCache` (12 parts of 4 MiB), then times, in interleaved
repetitions (the order rotates each round):

- ``cache get (blake3)``: :meth:`ChunkCache.get` into a fresh buffer, checked against the
  chunk's BLAKE3 digest (what a reader of a chunk set with BLAKE3 digests does);
- ``cache get (blake3, reused out)``: the same into a caller-owned buffer (what the engine
  does with its reused chunk buffers);
- ``cache get (sha256)``: the same, checked against the sha256 id (chunk sets without
  BLAKE3 digests);
- ``cache get (unverified)``: the same read without the hash (information only);
- ``raw GET x 4 MiB``: plain ``redis.get`` of the same 12 part values, bytes discarded;
- ``blake3 alone`` / ``sha256 alone``: hashing 48 MiB already in memory, the floor of a
  verified read.

Prints medians, MB/s (10^6 bytes) and the ratio verified (blake3) / raw (goal >= 0.85), the
CPU time
each case costs (this process plus the Redis server, which shares the machine), and two
ceilings for the ratio: raw / sha256 alone (a verified read cannot beat its hash) and
raw / (verified read's CPU / cores) (no schedule beats the machine's cores).

Usage: ``.venv/bin/python bench/cache_read.py [--reps 9] [--size-mb 48]``; with ``--shards N``
it compares one shard with ``N`` shards on one server instead (``bench/cache_shards.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import statistics
import time
from collections.abc import Callable

import redis

from sw_core.cache import ChunkCache, allocate_buffer
from sw_core.hashing import hex_digest
from sw_core.keys import Keys
from sw_core.local.redis_server import RedisServer

PART_BYTES = 4 << 20
RAW = f"raw GET x {PART_BYTES >> 20} MiB"
VERIFIED = "cache get (blake3)"
GOAL = 0.85


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=9, help="interleaved repetitions (>= 7)")
    parser.add_argument("--size-mb", type=int, default=48, help="chunk size in MiB")
    parser.add_argument(
        "--shards", type=int, default=0, help="only compare one shard vs N shards on one server"
    )
    args = parser.parse_args()
    if args.shards > 1:
        from cache_shards import compare_shards  # bench/cache_shards.py

        compare_shards(args.shards, reps=args.reps)
        return 0
    size_bytes = args.size_mb << 20
    data = os.urandom(size_bytes)
    chunk_id = hashlib.sha256(data).hexdigest()
    blake3_hex = hex_digest("blake3", data)

    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        keys = Keys("bench")
        cache = ChunkCache(
            client, keys=keys, cache_size_bytes=4 * size_bytes, part_size_bytes=PART_BYTES
        )
        started = time.perf_counter()
        cache.put(chunk_id, data)
        put_s = time.perf_counter() - started
        part_keys = [keys.cache_part(chunk_id, n) for n in range(-(-size_bytes // PART_BYTES))]
        reused = allocate_buffer(size_bytes)

        def verified() -> None:
            assert cache.get(chunk_id, blake3=blake3_hex) is not None

        def verified_reused() -> None:
            assert cache.get(chunk_id, out=reused, blake3=blake3_hex) is not None

        def verified_sha256() -> None:
            assert cache.get(chunk_id) is not None

        def unverified() -> None:
            assert cache._read(chunk_id, out=None, verify=None) is not None

        def raw() -> None:
            for key in part_keys:
                assert client.get(key) is not None

        def sha256_alone() -> None:
            hashlib.sha256(data).digest()

        def blake3_alone() -> None:
            hex_digest("blake3", data)

        cases: dict[str, Callable[[], None]] = {
            VERIFIED: verified,
            "cache get (blake3, reused out)": verified_reused,
            "cache get (sha256)": verified_sha256,
            "cache get (unverified)": unverified,
            "blake3 alone": blake3_alone,
            "sha256 alone": sha256_alone,
            RAW: raw,
        }
        assert bytes(cache.get(chunk_id) or b"") == data
        for case in cases.values():  # warm-up: connections, scripts, hash threads
            case()
        times: dict[str, list[float]] = {name: [] for name in cases}
        cpu_s: dict[str, list[float]] = {name: [] for name in cases}
        names = list(cases)
        for rep in range(max(args.reps, 7)):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                cpu_before = process_cpu_s() + redis_cpu_s(client)
                started = time.perf_counter()
                cases[name]()
                times[name].append(time.perf_counter() - started)
                cpu_s[name].append(process_cpu_s() + redis_cpu_s(client) - cpu_before)
        cache.close()
        client.close()

    medians = {name: statistics.median(values) for name, values in times.items()}
    raw_s = medians[RAW]
    print(
        f"chunk {args.size_mb} MiB in {len(part_keys)} parts; put {size_bytes / put_s / 1e6:.0f} MB/s; "
        f"medians of {max(args.reps, 7)} interleaved runs"
    )
    print(f"{'case':34s} {'median ms':>10s} {'MB/s':>8s} {'vs raw':>7s} {'CPU ms':>7s}")
    for name, median_s in medians.items():
        print(
            f"{name:34s} {median_s * 1e3:10.1f} {size_bytes / median_s / 1e6:8.0f} "
            f"{raw_s / median_s:7.2f} {statistics.median(cpu_s[name]) * 1e3:7.1f}"
        )
    ratio = raw_s / medians[VERIFIED]
    print(
        f"verified (blake3) / raw = {ratio:.2f} (goal >= {GOAL}: "
        f"{'met' if ratio >= GOAL else 'NOT met'}); reused out: "
        f"{raw_s / medians['cache get (blake3, reused out)']:.2f}; sha256: "
        f"{raw_s / medians['cache get (sha256)']:.2f}"
    )
    print(f"ceiling from the hash: raw / blake3 alone = {raw_s / medians['blake3 alone']:.2f}")
    cores = os.cpu_count() or 1
    floor_s = statistics.median(cpu_s[VERIFIED]) / cores
    print(
        f"ceiling from the cores: a verified read costs "
        f"{statistics.median(cpu_s[VERIFIED]) * 1e3:.1f} ms of CPU (process + "
        f"Redis), >= {floor_s * 1e3:.1f} ms on {cores} cores: raw / that = {raw_s / floor_s:.2f}"
    )
    return 0


def process_cpu_s() -> float:
    """CPU seconds of this process, all threads (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def redis_cpu_s(client: redis.Redis) -> float:
    """CPU seconds the Redis server has used (INFO cpu, main thread and children)."""
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


if __name__ == "__main__":
    raise SystemExit(main())

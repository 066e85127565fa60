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

Usage: ``.venv/bin/python bench/cache_read.py [--reps 15] [--size-mb 48]``; with ``--shards N``
it compares one shard with ``N`` shards on one server instead (``bench/cache_shards.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import redis
from figures import Figure, Profile, print_figures  # bench/, beside this script
from timing import process_cpu_s, redis_cpu_s, rotated

from sw_core.cache import ChunkCache, allocate_buffer
from sw_core.hashing import hex_digest
from sw_core.keys import Keys
from sw_core.local.redis_server import RedisServer

PART_BYTES = 4 << 20
RAW = f"raw GET x {PART_BYTES >> 20} MiB"
VERIFIED = "cache get (blake3)"
REUSED = "cache get (blake3, reused out)"
SHA256 = "cache get (sha256)"
UNVERIFIED = "cache get (unverified)"
GOAL = 0.85


def measure(reps: int, size_mb: int) -> dict[str, Any]:
    """Time every case in ``reps`` interleaved rounds; medians (s) and CPU medians (s)."""
    size_bytes = size_mb << 20
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
            REUSED: verified_reused,
            SHA256: verified_sha256,
            UNVERIFIED: unverified,
            "blake3 alone": blake3_alone,
            "sha256 alone": sha256_alone,
            RAW: raw,
        }
        assert bytes(cache.get(chunk_id) or b"") == data
        for case in cases.values():  # warm-up: connections, scripts, hash threads
            case()
        times: dict[str, list[float]] = {name: [] for name in cases}
        cpu_s: dict[str, list[float]] = {name: [] for name in cases}
        for rep in range(max(reps, 7)):
            for name in rotated(list(cases), rep):
                cpu_before = process_cpu_s() + redis_cpu_s(client)
                started = time.perf_counter()
                cases[name]()
                times[name].append(time.perf_counter() - started)
                cpu_s[name].append(process_cpu_s() + redis_cpu_s(client) - cpu_before)
        cache.close()
        client.close()
    return {
        "size_bytes": size_bytes,
        "parts": len(part_keys),
        "reps": max(reps, 7),
        "put_s": put_s,
        "median_s": {name: statistics.median(values) for name, values in times.items()},
        "cpu_s": {name: statistics.median(values) for name, values in cpu_s.items()},
    }


def report(m: dict[str, Any]) -> None:
    """The detailed table of one run."""
    medians, size_bytes = m["median_s"], m["size_bytes"]
    raw_s = medians[RAW]
    print(
        f"chunk {size_bytes >> 20} MiB in {m['parts']} parts; put "
        f"{size_bytes / m['put_s'] / 1e6:.0f} MB/s; medians of {m['reps']} interleaved runs"
    )
    print(f"{'case':34s} {'median ms':>10s} {'MB/s':>8s} {'vs raw':>7s} {'CPU ms':>7s}")
    for name, median_s in medians.items():
        print(
            f"{name:34s} {median_s * 1e3:10.1f} {size_bytes / median_s / 1e6:8.0f} "
            f"{raw_s / median_s:7.2f} {m['cpu_s'][name] * 1e3:7.1f}"
        )


def to_figures(m: dict[str, Any]) -> list[Figure]:
    medians, cpu = m["median_s"], m["cpu_s"]
    raw_s = medians[RAW]
    cores = os.cpu_count() or 1
    mib = m["size_bytes"] >> 20
    how = f"{mib} MiB chunk, medians of {m['reps']} interleaved rounds"
    return [
        Figure(
            "cache_read.verified_vs_raw",
            raw_s / medians[VERIFIED],
            "x",
            "verified read (BLAKE3) / raw GETs, speed",
            goal=f">= {GOAL}",
            note=f"ChunkCache.get into a fresh buffer vs redis-py GETs of its parts; {how}",
        ),
        Figure(
            "cache_read.reused_vs_raw",
            raw_s / medians[REUSED],
            "x",
            "verified read (BLAKE3) into a reused buffer / raw GETs",
            note="what the engine does (reused chunk buffers)",
        ),
        Figure(
            "cache_read.sha256_vs_raw",
            raw_s / medians[SHA256],
            "x",
            "verified read (sha256) / raw GETs",
            note="chunk sets without BLAKE3 digests",
        ),
        Figure(
            "cache_read.unverified_vs_raw",
            raw_s / medians[UNVERIFIED],
            "x",
            "unverified read / raw GETs",
            note="the same read without the hash",
        ),
        Figure("cache_read.raw_ms", raw_s * 1e3, "ms", f"raw GETs of {mib} MiB"),
        Figure(
            "cache_read.verified_ms",
            medians[VERIFIED] * 1e3,
            "ms",
            f"verified read (BLAKE3) of {mib} MiB",
        ),
        Figure(
            "cache_read.verified_cpu_ms",
            cpu[VERIFIED] * 1e3,
            "ms",
            "CPU of one verified read (process + Redis)",
        ),
        Figure(
            "cache_read.blake3_cpu_ms",
            cpu["blake3 alone"] * 1e3,
            "ms",
            f"CPU of BLAKE3 over {mib} MiB",
        ),
        Figure(
            "cache_read.cpu_ceiling",
            raw_s / (cpu[VERIFIED] / cores),
            "x",
            f"ceiling from the cores: raw / (verified read's CPU / {cores} cores)",
            note="no schedule beats the machine's cores",
        ),
    ]


def figures(profile: Profile) -> list[Figure]:
    """Figures for ``bench/run.py``."""
    m = measure(profile.pick(9, 15), 48)
    report(m)
    return to_figures(m)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15, help="interleaved repetitions (>= 7)")
    parser.add_argument("--size-mb", type=int, default=48, help="chunk size in MiB")
    parser.add_argument(
        "--shards", type=int, default=0, help="only compare one shard vs N shards on one server"
    )
    args = parser.parse_args()
    if args.shards > 1:
        from cache_shards import compare_shards  # bench/cache_shards.py

        compare_shards(args.shards, reps=args.reps)
        return 0
    m = measure(args.reps, args.size_mb)
    report(m)
    print_figures(to_figures(m))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

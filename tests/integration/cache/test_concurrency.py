"""Four concurrent writers on separate connections against a 20 MiB cache and 60 MB of chunks.

A monitor thread samples, atomically (one Lua call), the byte counter and the real sum of
STRLEN over every part key: both stay within the budget and equal each other at every
sample. At the end the accounting is exact and nothing outside the cache was touched.
"""

from __future__ import annotations

import hashlib
import random
import threading

import redis

from sw_core import counters as stats
from sw_core.cache import ChunkCache
from sw_core.counters import Counters
from sw_core.keys import Keys

MIB = 1 << 20
BUDGET_BYTES = 20 * MIB
WRITERS = 4

#: Test-only snapshot: {counter, sum of STRLEN of the part keys} in one atomic step.
SNAPSHOT_LUA = """
local total = 0
for _, key in ipairs(redis.call('KEYS', ARGV[1])) do
  total = total + redis.call('STRLEN', key)
end
return {tonumber(redis.call('HGET', KEYS[1], 'bytes') or '0'), total}
"""


def chunks() -> list[tuple[str, bytes]]:
    """20 chunks of 2 MB (two parts of 1 MiB, the last short) and 4 of 5 MiB (five parts)."""
    rng = random.Random(1234)
    sizes = [2_000_000] * 20 + [5 * MIB] * 4
    rng.shuffle(sizes)
    out = []
    for size in sizes:
        data = rng.randbytes(size)
        out.append((hashlib.sha256(data).hexdigest(), data))
    return out


def test_concurrent_writers_stay_within_budget_with_exact_accounting(redis_url: str) -> None:
    admin = redis.Redis.from_url(redis_url)
    keys = Keys("sw")
    admin.xadd(keys.jobs, {"payload": b"job-1"})
    admin.xadd(keys.jobs, {"payload": b"job-2"})
    admin.set("unrelated:string", b"keep me")
    admin.hset("unrelated:hash", mapping={"a": "1", "b": "2"})
    before = (
        admin.xrange(keys.jobs),
        admin.get("unrelated:string"),
        admin.hgetall("unrelated:hash"),
    )

    work = chunks()
    assert sum(len(d) for _, d in work) > 2 * BUDGET_BYTES
    snapshot = admin.register_script(SNAPSHOT_LUA)
    samples: list[tuple[int, int]] = []
    done = threading.Event()
    errors: list[BaseException] = []

    def monitor() -> None:
        while not done.is_set():
            counted, stored = snapshot(keys=[keys.cache_meta], args=[f"{keys.cache_part_prefix}*"])
            samples.append((int(counted), int(stored)))

    caches: list[ChunkCache] = []

    def writer(index: int) -> None:
        try:
            client = redis.Redis.from_url(redis_url)
            cache = ChunkCache(
                client,
                keys=keys,
                cache_size_bytes=BUDGET_BYTES,
                part_size_bytes=MIB,
                counters=Counters(),
            )
            caches.append(cache)
            rng = random.Random(index)
            mine = work[index::WRITERS]
            for n, (chunk_id, data) in enumerate(mine):
                assert cache.put(chunk_id, data) is True
                # Read back a random earlier chunk of any writer: a hit must be exact.
                other_id, other = rng.choice(work[: (n + 1) * WRITERS])
                got = cache.get(other_id)
                assert got is None or bytes(got) == other
            cache.close()
            client.close()
        except BaseException as exc:  # surfaced by the main thread
            errors.append(exc)

    watcher = threading.Thread(target=monitor)
    watcher.start()
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    done.set()
    watcher.join(timeout=30)
    assert not errors, errors

    assert len(samples) > 20, len(samples)
    assert max(counted for counted, _ in samples) > BUDGET_BYTES - 5 * MIB  # it did fill up
    assert all(counted <= BUDGET_BYTES and stored <= BUDGET_BYTES for counted, stored in samples)
    assert all(counted == stored for counted, stored in samples)

    info = caches[0].info()
    sizes = {chunk_id: len(data) for chunk_id, data in work}
    present = [m.decode() for m in admin.zrange(keys.cache_lru, 0, -1)]
    assert info.used_bytes == sum(sizes[c] for c in present) <= BUDGET_BYTES
    assert info.used_bytes == sum(
        admin.strlen(k) for k in admin.scan_iter(match=f"{keys.cache_part_prefix}*")
    )
    # Every part key belongs to a listed chunk, every listed chunk is complete, nothing staged.
    expected_parts = {
        keys.cache_part(c, n).encode() for c in present for n in range(-(-sizes[c] // MIB))
    }
    assert set(admin.scan_iter(match=f"{keys.cache_part_prefix}*")) == expected_parts
    assert {k.decode() for k in admin.scan_iter(match=f"{keys.cache_info_prefix}*")} == {
        keys.cache_info(c) for c in present
    }
    assert not list(admin.scan_iter(match="sw:cache:*:staging:*"))
    # Each chunk was committed once: whatever is gone was evicted, and counted once.
    assert info.evictions == len(work) - len(present)
    assert info.evictions == sum(c.counters.get(stats.CACHE_EVICTIONS) for c in caches)
    assert sum(c.counters.get(stats.CACHE_EVICTIONS) > 0 for c in caches) >= 2  # interleaved
    assert info.hits == sum(c.counters.get(stats.CACHE_HITS) for c in caches)
    assert info.misses == sum(c.counters.get(stats.CACHE_MISSES) for c in caches)
    assert info.corruptions == 0
    after = (
        admin.xrange(keys.jobs),
        admin.get("unrelated:string"),
        admin.hgetall("unrelated:hash"),
    )
    assert after == before
    admin.close()

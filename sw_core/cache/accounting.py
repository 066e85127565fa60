"""The chunk cache's accounting: used bytes, counters and chunk counts summed over its shards,
and clearing every shard. Each shard's numbers are read in one atomic Lua call."""

from __future__ import annotations

from typing import Any

import redis

from sw_core.cache.async_api import CacheInfo
from sw_core.cache.errors import cache_error
from sw_core.cache.shards import CacheShards


class CacheAccounting:
    """``info``, ``shard_info`` and ``clear`` of :class:`~sw_core.cache.ChunkCache`."""

    _clients: CacheShards
    _info: Any
    _clear: Any
    budget_bytes: int

    def info(self) -> CacheInfo:
        """Used bytes, budget, chunk count and the counters, added up over the shards (each
        shard's read in one atomic step)."""
        shards = (self.shard_info(n) for n in range(self._clients.count))
        used, hits, misses, evictions, corruptions, refusals, chunks = map(
            sum, zip(*shards, strict=True)
        )
        return CacheInfo(
            used, self.budget_bytes, chunks, hits, misses, evictions, corruptions, refusals
        )

    def shard_info(self, shard: int) -> tuple[int, int, int, int, int, int, int]:
        """One shard's ``(bytes, hits, misses, evictions, corruptions, refusals, chunks)``."""
        keys = self._clients.keys_of(shard)
        try:
            values = self._info(
                keys=[keys.cache_meta, keys.cache_lru], client=self._clients.client(shard)
            )
        except redis.RedisError as exc:
            self._clients.failed(shard)
            raise cache_error(exc, f"reading the accounting of cache shard {shard}") from exc
        used, hits, misses, evictions, corruptions, refusals, chunks = (int(v or 0) for v in values)
        return used, hits, misses, evictions, corruptions, refusals, chunks

    def clear(self) -> None:
        """Remove every cached chunk and reset the accounting; no other key is touched."""
        for shard in range(self._clients.count):
            keys = self._clients.keys_of(shard)
            try:
                self._clear(
                    keys=[keys.cache_lru, keys.cache_meta, keys.cache_freq],
                    args=[keys.cache_info_prefix, keys.cache_part_prefix],
                    client=self._clients.client(shard),
                )
            except redis.RedisError as exc:
                self._clients.failed(shard)
                raise cache_error(exc, f"clearing cache shard {shard}") from exc

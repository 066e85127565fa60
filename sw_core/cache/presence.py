"""Which of many chunks the cache holds, in one pipelined round trip per shard (for the
gateway's chunk map: no LRU bump, no hit or miss counted, no bytes read)."""

from __future__ import annotations

import redis

from sw_core.cache.chunk_cache import ChunkCache
from sw_core.cache.digest import check_chunk_id
from sw_core.cache.errors import cache_error


def cached(cache: ChunkCache, chunk_ids: list[str]) -> list[bool]:
    """Whether each chunk (by sha256 id) is in ``cache`` now.

    Raises:
        CacheError: a shard's Redis failed.
    """
    clients = cache._clients
    found = [False] * len(chunk_ids)
    by_shard: dict[int, list[int]] = {}
    for i, chunk_id in enumerate(chunk_ids):
        check_chunk_id(chunk_id)
        shard, _, _ = clients.where(chunk_id)
        by_shard.setdefault(shard, []).append(i)
    for shard, indices in by_shard.items():
        keys = clients.keys_of(shard)
        try:
            with clients.client(shard).pipeline(transaction=False) as pipe:
                for i in indices:
                    pipe.exists(keys.cache_info(chunk_ids[i]))
                for i, present in zip(indices, pipe.execute(), strict=True):
                    found[i] = bool(present)
        except redis.RedisError as exc:
            clients.failed(shard)
            raise cache_error(exc, f"checking {len(indices)} chunks of shard {shard}") from exc
    return found

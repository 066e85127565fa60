"""Shards of the chunk cache: which shard holds a chunk, and which Redis serves a shard.

A shard is a hash tag (:func:`~sw_core.keys.cache_shard_tag`) with its own LRU set, byte
accounting and parts, and ``1/N`` of the cache's budget, so every Lua call touches one slot.
On one server all shards share its client (a server is a cluster of one); on Redis Cluster
each shard is served by the node that owns its slot, and a shard whose node fails fails alone
(the others keep serving; its reads raise :class:`CacheError`, which callers treat as misses).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script

from sw_core.exceptions import ConfigError
from sw_core.keys import Keys, keys_of_cache_shard
from sw_core.queue_redis import queue_redis_sync
from sw_core.settings import Settings

#: Least time between two refreshes of a cluster's slot map after errors.
TOPOLOGY_REFRESH_S = 1.0


def shard_of(chunk_id: str, shards: int) -> int:
    """The shard of a chunk: its id's first 32 bits modulo the shard count."""
    return int(chunk_id[:8], 16) % shards


def open_cache_redis(settings: Settings) -> redis.Redis | RedisCluster:
    """The cache's client: ``RedisCluster`` with ``cache_cluster``, else ``redis.Redis`` (the
    queues' master through Sentinel when the cache has no URL of its own)."""
    timeouts = {
        "socket_timeout": settings.timeout_seconds,
        "socket_connect_timeout": settings.timeout_seconds,
    }
    if settings.cache_cluster:
        # A failed master leaves its slots uncovered: the other shards keep working.
        return RedisCluster.from_url(settings.cache_url, require_full_coverage=False, **timeouts)
    if not settings.cache_redis_url and settings.redis_sentinels:
        return queue_redis_sync(settings, **timeouts)  # the cache shares the queues' master
    return redis.Redis.from_url(settings.cache_url, **timeouts)


class CacheShards:
    """The shards' key names and the ``redis.Redis`` that serves each (thread-safe).

    Args:
        client: one server's client, or a ``RedisCluster``.
        keys: key names (the shards' tags are derived from them).
        count: number of shards.
    """

    def __init__(self, client: redis.Redis | RedisCluster, keys: Keys, count: int) -> None:
        if client.get_encoder().decode_responses:
            raise ConfigError("ChunkCache needs a Redis client with decode_responses=False")
        self.base = client
        self.keys = keys
        self.count = count
        self._keys = [keys_of_cache_shard(keys, n) for n in range(count)]
        self.cluster = isinstance(client, RedisCluster)
        self._nodes: dict[int, redis.Redis] = {}
        self._lock = threading.Lock()
        self._stale = False
        self._refreshed_at = 0.0

    def keys_of(self, shard: int) -> Keys:
        """Key names of one shard."""
        return self._keys[shard]

    def where(self, chunk_id: str) -> tuple[int, Keys, redis.Redis]:
        """The chunk's shard, that shard's key names and the client that serves it."""
        shard = shard_of(chunk_id, self.count)
        return shard, self._keys[shard], self.client(shard)

    def entry_keys(self, chunk_id: str, keys: Keys | None = None) -> list[str]:
        """KEYS of the lookup, commit and drop scripts: the chunk's info hash, LRU set, meta."""
        keys = keys or self._keys[shard_of(chunk_id, self.count)]
        return [keys.cache_info(chunk_id), keys.cache_lru, keys.cache_meta]

    def client(self, shard: int) -> redis.Redis:
        """The client of the node that owns ``shard``'s slot (the server itself if not a cluster)."""
        if not self.cluster:
            # redis-py's RedisCluster is Any as a value, so isinstance() does not narrow
            return self.base  # type: ignore[return-value]
        with self._lock:
            found = self._nodes.get(shard)
            if found is not None:
                return found
            self._refresh_if_stale()
            cluster: Any = self.base
            node = cluster.get_node_from_key(self._keys[shard].cache_lru)
            found = cluster.get_redis_connection(node)
            self._nodes[shard] = found
            return found

    def register_script(self, source: str) -> Script:
        """A Lua script on the base client (each call names its shard's node: ``client=``)."""
        # redis-py types register_script's self as redis.Redis; RedisCluster has the same one
        return self.base.register_script(source)  # type: ignore[misc]

    def failed(self, shard: int) -> None:
        """A call on ``shard`` failed: look its node up again (the slot may have moved)."""
        if self.cluster:
            with self._lock:
                self._nodes.pop(shard, None)
                self._stale = True

    def _refresh_if_stale(self) -> None:
        now = time.monotonic()
        if not self._stale or now - self._refreshed_at < TOPOLOGY_REFRESH_S:
            return
        self._refreshed_at = now
        try:
            self.base.nodes_manager.initialize()  # type: ignore[union-attr]  # a cluster here
            self._stale = False
        except redis.RedisError:
            pass  # keep the old map; the next failure tries again

    def close(self) -> None:
        """Close the client (and with a cluster, every node's connections)."""
        self.base.close()

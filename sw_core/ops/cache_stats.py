"""The chunk cache's accounting for the monitor, read from the cache's own Redis.

The cache may live on another server than the queues (``SW_CACHE_REDIS_URL``) and is split
into shards, so the monitor asks :meth:`ChunkCache.info` (which adds up every shard) instead
of reading one meta hash on the queue server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sw_core.settings import Settings

if TYPE_CHECKING:
    from sw_core.cache import ChunkCache


class CacheStatsReader:
    """Reads :meth:`ChunkCache.info` as the monitor's ``cache_meta`` and ``cache_chunks``.

    Args:
        settings: cache settings; the cache's Redis is ``cache_redis_url``, else ``redis_url``.
        redis_url: the queue Redis the monitor reads (the cache's when no cache URL is set).
    """

    def __init__(self, settings: Settings, redis_url: str) -> None:
        self.settings = settings.replace(cache_redis_url=settings.cache_redis_url or redis_url)
        self._cache: ChunkCache | None = None

    def read(self) -> dict[str, Any]:
        """``{"cache_meta": {...}, "cache_chunks": n}``; a failed read gives the exception
        for both (the monitor then shows zeros, as for any failed pipeline command)."""
        from sw_core.cache import ChunkCache

        try:
            if self._cache is None:
                self._cache = ChunkCache.from_settings(self.settings)
            info = self._cache.info()
        except Exception as exc:  # shown as a failed read, never raised
            return {"cache_meta": exc, "cache_chunks": exc}
        meta = {
            "bytes": info.used_bytes,
            "hits": info.hits,
            "misses": info.misses,
            "evictions": info.evictions,
            "corruptions": info.corruptions,
            "refusals": info.refusals,
        }
        return {"cache_meta": meta, "cache_chunks": info.chunks}

    def close(self) -> None:
        """Close the cache's connections."""
        if self._cache is not None:
            self._cache.close()
            self._cache = None

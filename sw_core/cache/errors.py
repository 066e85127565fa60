"""Redis failures of the chunk cache, worded for the operator who has to fix them."""

from __future__ import annotations

import redis

from sw_core.exceptions import CacheError


def cache_error(exc: redis.RedisError, doing: str) -> CacheError:
    """The :class:`CacheError` for a Redis error met while ``doing`` something."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError) or str(exc).startswith("OOM"):
        return CacheError(
            f"Redis is out of memory (maxmemory reached with a noeviction policy) while "
            f"{doing}; set SW_CACHE_SIZE_MB well below Redis' maxmemory or raise maxmemory"
        )
    if isinstance(exc, redis.ResponseError) and "SWCACHE_STAGING_LOST" in str(exc):
        return CacheError(
            f"{exc} while {doing}: the upload took longer than the staging TTL "
            f"(timeout_seconds); retry, or raise SW_TIMEOUT_SECONDS"
        )
    return CacheError(f"chunk cache Redis error while {doing}: {exc}")

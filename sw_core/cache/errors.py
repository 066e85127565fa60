"""Redis failures of the chunk cache, worded for the operator who has to fix them."""

from __future__ import annotations

import redis

from sw_core.exceptions import CacheError, ChunkTooLargeError
from sw_core.utils import mib

_MIB = 1 << 20


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis refusing a write for lack of memory (``maxmemory`` reached
    with ``noeviction``): as such, or inside a pipeline's or a transaction's error."""
    text = str(exc)
    return (
        isinstance(exc, redis.exceptions.OutOfMemoryError)
        or text.startswith("OOM")
        or "used memory > 'maxmemory'" in text
    )


def out_of_memory_error(doing: str) -> CacheError:
    """The :class:`CacheError` of Redis refusing a write for lack of memory while ``doing``
    something (the chunk cache is what usually fills it)."""
    return CacheError(
        f"Redis is out of memory (maxmemory reached with a noeviction policy) while "
        f"{doing}; set SW_CACHE_SIZE_MB well below Redis' maxmemory or raise maxmemory"
    )


def cache_error(exc: redis.RedisError, doing: str) -> CacheError:
    """The :class:`CacheError` for a Redis error met while ``doing`` something."""
    if out_of_memory(exc):
        return out_of_memory_error(doing)
    if isinstance(exc, redis.ResponseError) and "SWCACHE_STAGING_LOST" in str(exc):
        return CacheError(
            f"{exc} while {doing}: the upload took longer than the staging TTL "
            f"(timeout_seconds); retry, or raise SW_TIMEOUT_SECONDS"
        )
    return CacheError(f"chunk cache Redis error while {doing}: {exc}")


def too_large_error(chunk_id: str, size: int, budget_bytes: int, shards: int) -> ChunkTooLargeError:
    """A chunk larger than its cache shard (``budget_bytes / shards``): what to raise."""
    if shards == 1:
        return ChunkTooLargeError(
            f"chunk {chunk_id[:12]} is {mib(size):.1f} MiB, larger than the whole chunk cache "
            f"({mib(budget_bytes):.1f} MiB, cache_size_mb={budget_bytes // _MIB}); "
            f"raise SW_CACHE_SIZE_MB to at least {-(-size // _MIB)}"
        )
    return ChunkTooLargeError(
        f"chunk {chunk_id[:12]} is {mib(size):.1f} MiB, larger than a cache shard "
        f"({mib(budget_bytes // shards):.1f} MiB: SW_CACHE_SIZE_MB={budget_bytes // _MIB} "
        f"over SW_CACHE_SHARDS={shards}); raise SW_CACHE_SIZE_MB to at least "
        f"{shards * -(-size // _MIB)} or use fewer shards"
    )

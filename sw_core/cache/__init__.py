"""The shared chunk cache: a content-addressed LRU of verified chunks in Redis.

:class:`ChunkCache` stores each chunk as parts of a few MiB under its sha256, commits and
evicts in one Lua call, and re-hashes every chunk it hands out.
"""

from __future__ import annotations

from sw_core.cache.async_api import CacheInfo
from sw_core.cache.chunk_cache import ChunkCache
from sw_core.cache.digest import allocate_buffer

__all__ = ["CacheInfo", "ChunkCache", "allocate_buffer"]

"""The shared chunk cache: a content-addressed cache of verified chunks in Redis.

:class:`ChunkCache` stores each chunk as parts of a few MiB under its sha256, commits and
evicts (least recently used first) in one Lua call, admits a chunk into a full cache only
when it was used more often than what it would evict (:mod:`sw_core.cache.admission`), and
re-hashes every chunk it hands out.
"""

from __future__ import annotations

from sw_core.cache.admission import Lookup
from sw_core.cache.async_api import CacheInfo
from sw_core.cache.chunk_cache import ChunkCache
from sw_core.cache.digest import allocate_buffer

__all__ = ["CacheInfo", "ChunkCache", "Lookup", "allocate_buffer"]

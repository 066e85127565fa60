"""Chunk cache helpers: random chunks with their ids, a cache over a test Redis."""

from __future__ import annotations

import hashlib
import random

import redis

from sw_core.cache import ChunkCache
from sw_core.counters import Counters
from sw_core.keys import Keys

MIB = 1 << 20


def chunk(size_bytes: int, seed: int) -> tuple[str, bytes]:
    """Random bytes and their sha256 id (the cache's content address)."""
    data = random.Random(seed).randbytes(size_bytes)
    return hashlib.sha256(data).hexdigest(), data


def make_cache(client: redis.Redis, budget_bytes: int, part_bytes: int = MIB, **kw) -> ChunkCache:
    """A cache under the ``sw`` prefix counting into its own :class:`Counters`."""
    return ChunkCache(
        client,
        keys=Keys("sw"),
        cache_size_bytes=budget_bytes,
        part_size_bytes=part_bytes,
        counters=Counters(),
        **kw,
    )

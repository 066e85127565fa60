"""Moving one chunk's parts between a buffer and Redis, hashing them as they move.

A read fills the target from the layout the lookup script gave (parts, size, part size) with
:class:`~sw_core.cache.redis_bulk.BulkReader` (one copy, by the kernel); a write SETs the
parts under staging names for the commit script to rename. Neither decides what a failure
means: a read says why the entry could not be read (the cache drops it), a write gives the
digest (the cache compares it).
"""

from __future__ import annotations

from typing import Literal

import redis

from sw_core.cache.digest import ChunkDigest
from sw_core.cache.redis_bulk import BulkReader
from sw_core.keys import Keys

#: Why an entry could not be read: a part vanished (evicted meanwhile), or it is damaged.
Failure = Literal["lost", "corrupt"]


def layout_ok(parts: int, size: int, part_bytes: int) -> bool:
    """Whether an info hash describes a readable entry."""
    return parts >= 1 and part_bytes >= 1 and 0 <= size <= parts * part_bytes


def read_parts(
    client: redis.Redis,
    keys: Keys,
    chunk_id: str,
    target: memoryview,
    parts: int,
    part_bytes: int,
    digest: ChunkDigest | None,
) -> Failure | None:
    """Fill ``target`` (the chunk's size) with its ``parts``; None when every byte arrived.

    Raises:
        redis.RedisError: the connection failed (the caller maps it to CacheError).
    """
    size = target.nbytes
    feed = digest.feed if digest is not None else None
    offset = 0
    with BulkReader(client) as reader:
        for n in range(parts):
            expected = min(part_bytes, size - offset)
            if expected < 0 or (n > 0 and expected == 0):
                return "corrupt"
            piece = target[offset : offset + expected]
            got = reader.get_into(keys.cache_part(chunk_id, n), piece, feed=feed)
            if got is None:
                return "lost"
            if got != expected:
                return "corrupt"
            offset += expected
    return None if offset == size else "corrupt"


def upload_parts(
    client: redis.Redis,
    view: memoryview,
    staged: list[str],
    part_bytes: int,
    ttl_ms: int,
    digest: ChunkDigest | None,
) -> str | None:
    """SET ``view`` in parts of ``part_bytes`` under the ``staged`` names (expiring after
    ``ttl_ms``); the digest of the bytes when ``digest`` is given."""
    try:
        for n, key in enumerate(staged):
            piece = view[n * part_bytes : (n + 1) * part_bytes]
            if digest is not None:
                digest.feed(piece)
            client.set(key, piece, px=ttl_ms)
        return digest.hexdigest() if digest is not None else None
    finally:
        if digest is not None:
            digest.abandon()

"""Moving one chunk's parts between a buffer and Redis, hashing them as they move.

A read fills the target from the layout the lookup script gave (parts, size, part size) with
:class:`~sw_core.cache.redis_bulk.BulkReader` (one copy, by the kernel); a write SETs the
parts under staging names for the commit script to rename. Neither decides what a failure
means: a read says why the entry could not be read (the cache drops it), a write gives the
digest (the cache compares it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import redis
from redis.commands.core import Script

from sw_core.cache.digest import ChunkDigest
from sw_core.cache.redis_bulk import BulkReader
from sw_core.keys import Keys

#: Why an entry could not be read: a part vanished (evicted meanwhile), or it is damaged.
Failure = Literal["lost", "corrupt"]


def layout_ok(parts: int, size: int, part_bytes: int) -> bool:
    """Whether an info hash describes a readable entry."""
    return parts >= 1 and part_bytes >= 1 and 0 <= size <= parts * part_bytes


@dataclass
class FirstPart:
    """Part 0 of a chunk, read in the lookup's round trip, before the layout was known."""

    #: Where the whole chunk lands (its size as the caller's manifest says).
    target: memoryview
    #: The digest part 0 was fed to, as it arrived (None: the read is not hashed here).
    digest: ChunkDigest | None
    #: The length of the part 0 that landed in ``target``; None when none did (there was no
    #: part 0, or a longer one than this cache's parts, which was discarded).
    got: int | None

    def if_fits(self, size: int, part_bytes: int) -> FirstPart | None:
        """Itself when part 0 landed where the looked-up layout puts it; else None, its
        digest abandoned (another part size, or no part 0: the whole chunk is read again)."""
        if self.target.nbytes == size and self.got == min(part_bytes, size):
            return self
        self.abandon()
        return None

    def abandon(self) -> None:
        """Stop the digest, if any (the read goes no further, or starts again)."""
        if self.digest is not None:
            self.digest.abandon()


def lookup_with_first(
    client: redis.Redis,
    lookup: Script,
    call: dict[str, list[Any]],
    part0_key: str,
    target: memoryview,
    part_bytes: int,
    digest: ChunkDigest | None,
) -> tuple[list[Any], FirstPart | None]:
    """The ``lookup`` script's reply (``call``: its KEYS and ARGV), with part 0 of the chunk
    read into ``target`` in the same round trip -- guessing the cache's ``part_bytes``
    (:meth:`FirstPart.if_fits` says whether it held). Without the script loaded (a new or
    flushed server) it runs as a plain call, which loads it, and part 0 is not read.
    ``digest`` (None: not hashed) is fed part 0 as it arrives.

    Raises:
        redis.RedisError: the connection failed (the caller maps it to CacheError).
    """
    piece = target[: min(part_bytes, target.nbytes)]
    feed = digest.feed if digest is not None else None
    try:
        with BulkReader(client) as reader:
            found, got = reader.script_then_get_into(
                lookup.sha, call["keys"], call["args"], part0_key, piece, feed=feed
            )
    except redis.exceptions.NoScriptError:
        if digest is not None:
            digest.abandon()
        return lookup(**call, client=client), None
    except BaseException:
        if digest is not None:
            digest.abandon()
        raise
    landed = got if got is not None and got <= piece.nbytes else None  # longer: discarded
    return found, FirstPart(target, digest, landed)


def read_parts(
    client: redis.Redis,
    keys: Keys,
    chunk_id: str,
    target: memoryview,
    parts: int,
    part_bytes: int,
    digest: ChunkDigest | None,
    *,
    first_done: bool = False,
) -> Failure | None:
    """Fill ``target`` (the chunk's size) with its ``parts``; None when every byte arrived.
    ``first_done``: part 0 is already in place (and fed to ``digest``).

    Raises:
        redis.RedisError: the connection failed (the caller maps it to CacheError).
    """
    size = target.nbytes
    feed = digest.feed if digest is not None else None
    start = 1 if first_done else 0
    offset = min(part_bytes, size) if first_done else 0
    if start >= parts:
        return None if offset == size else "corrupt"
    with BulkReader(client) as reader:
        for n in range(start, parts):
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

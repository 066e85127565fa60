"""The hash a cache read or write computes over a chunk while its parts move.

The algorithm is the one the caller expects (:class:`~sw_core.hashing.Expected`): BLAKE3
when the chunk's manifest records it, else sha256 (the chunk id itself).

A read checked with BLAKE3 hashes on the reading thread, each piece right after it arrived
(64 KiB at a time, :meth:`~sw_core.cache.redis_bulk.BulkReader.get_into`'s ``feed_bytes``,
while the piece is still in the core's cache). Other big chunks -- writes, and reads checked
with sha256, three times slower to hash -- are hashed on a helper thread that takes each
piece as soon as it is fed, overlapping the hash with the socket
(:class:`~sw_core.cache.ordered_hash.OrderedHash`); small ones inline (a helper costs more
than it saves).

Why BLAKE3 reads hash inline: on the 2-core machine of ``bench/cache_read.py`` a verified
read has Redis sending, this process receiving and the hash competing for the cores; a
helper makes that three threads on two cores, and hashing 64 KiB pieces on the receiving
thread was faster in every paired run (48 MiB: 22.5-24.9 ms against 24.2-28.1 ms with the
helper; verified / raw 0.74-0.84 against 0.69-0.80). sha256 alone takes longer than the
transfer, so it keeps its helper.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from sw_core.cache.ordered_hash import OrderedHash
from sw_core.hashing import Algorithm, new_hasher

#: Chunks up to this size are hashed on the writing thread.
INLINE_HASH_BYTES = 1 << 20


class ChunkDigest:
    """Digest of one chunk fed piece by piece, in order.

    Args:
        size_bytes: the chunk's size (chooses inline or helper hashing).
        start_helper: makes an :class:`OrderedHash` of an algorithm on the caller's pool.
        algorithm: ``sha256`` or ``blake3``.
        read: the bytes are being read (BLAKE3 is then hashed inline whatever the size).
    """

    def __init__(
        self,
        size_bytes: int,
        start_helper: Callable[[Algorithm], OrderedHash],
        algorithm: Algorithm = "sha256",
        *,
        read: bool = False,
    ) -> None:
        self.algorithm = algorithm
        inline = size_bytes <= INLINE_HASH_BYTES or (read and algorithm == "blake3")
        self._helper = None if inline else start_helper(algorithm)
        self._inline = new_hasher(algorithm) if self._helper is None else None

    def feed(self, piece: memoryview) -> None:
        """Hash the next piece (it must stay unchanged until :meth:`hexdigest` returns)."""
        if self._helper is not None:
            self._helper.feed(piece)
        else:
            assert self._inline is not None
            self._inline.update(piece)

    def hexdigest(self) -> str:
        """The digest of every piece fed; call once."""
        if self._helper is not None:
            helper, self._helper = self._helper, None
            return helper.hexdigest()
        assert self._inline is not None
        return self._inline.hexdigest()

    def abandon(self) -> None:
        """Stop hashing (the transfer failed); safe to call after :meth:`hexdigest`."""
        if self._helper is not None:
            self._helper.abandon()
            self._helper = None


def allocate_buffer(size_bytes: int) -> memoryview:
    """A writable buffer of ``size_bytes`` (contents undefined), for a chunk read.

    numpy asks the kernel for transparent huge pages on big allocations: a fresh 48 MiB
    buffer costs about 5 ms of page faults instead of 25-140 ms for a ``bytearray``.
    """
    return np.empty(size_bytes, dtype=np.uint8).data


def target_view(out: bytearray | memoryview | None, size: int) -> memoryview:
    """Where a read of ``size`` bytes lands: ``out`` (checked) or a new buffer."""
    if out is None:
        return allocate_buffer(size)
    view = memoryview(out).cast("B")
    if view.readonly or view.nbytes < size:
        raise ValueError(f"out must be a writable buffer of at least {size} bytes")
    return view[:size]


_CHUNK_ID = re.compile(r"[0-9a-f]{64}")


def check_chunk_id(chunk_id: str) -> None:
    """Raise ``ValueError`` unless ``chunk_id`` is a lower-case sha256 hex digest."""
    if not isinstance(chunk_id, str) or not _CHUNK_ID.fullmatch(chunk_id):
        raise ValueError(f"a chunk id is a lower-case sha256 hex digest, got {chunk_id!r}")

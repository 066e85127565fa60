"""The digest (sha256 or BLAKE3) of a byte stream fed in pieces, computed on a helper thread.

hashlib, blake3 and socket reads all release the GIL on big buffers, so a reader that feeds piece
``n`` here and goes on receiving piece ``n + 1`` overlaps hashing with I/O on two cores.
The pieces are hashed in the order they were fed, by one task of a shared thread pool.
"""

from __future__ import annotations

import queue
from concurrent.futures import Executor

from sw_core.hashing import Algorithm, new_hasher


class OrderedHash:
    """Digest of the buffers given to :meth:`feed`, in order, hashed by one pool task.

    The buffers must stay unchanged until :meth:`hexdigest` returns.

    Example:
        >>> from concurrent.futures import ThreadPoolExecutor
        >>> with ThreadPoolExecutor(1) as pool:
        ...     digest = OrderedHash(pool)
        ...     digest.feed(memoryview(b"ab"))
        ...     digest.feed(memoryview(b"c"))
        ...     digest.hexdigest()[:12]
        'ba7816bf8f01'
    """

    def __init__(self, pool: Executor, algorithm: Algorithm = "sha256") -> None:
        self.algorithm = algorithm
        self._pieces: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
        self._abandoned = False
        self._future = pool.submit(self._run)

    def _run(self) -> str:
        digest = new_hasher(self.algorithm)
        while (piece := self._pieces.get()) is not None:
            if not self._abandoned:
                digest.update(piece)
        return digest.hexdigest()

    def feed(self, piece: memoryview) -> None:
        """Queue the next piece of the stream."""
        self._pieces.put(piece)

    def hexdigest(self) -> str:
        """The digest of everything fed; call once, at the end (waits for the hashing)."""
        self._pieces.put(None)
        return self._future.result()

    def abandon(self) -> None:
        """Give up (the read failed): the task skips what is queued and ends."""
        self._abandoned = True
        self._pieces.put(None)

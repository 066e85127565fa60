"""The digest (sha256 or BLAKE3) of a byte stream fed in pieces, computed on a helper thread.

hashlib, blake3 and socket reads all release the GIL on big buffers, so a reader that feeds piece
``n`` here and goes on receiving piece ``n + 1`` overlaps hashing with I/O on two cores.
:class:`OrderedHash` lives with the other hashing helpers (:mod:`sw_core.hashing`), where the
storage backends can use it too.
"""

from __future__ import annotations

from sw_core.hashing import OrderedHash

__all__ = ["OrderedHash"]

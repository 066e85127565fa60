"""Chunk buffers reused from one fetch to the next, never while anything references one.

A streamed model fetches the same few sizes of chunk over and over; a fresh buffer for each
costs a page fault per 4 KiB page (measured: 1.8 million minor faults and 6.8 s of system
time for 12 SmolLM2 tokens at a 128 MiB budget). The pool keeps the buffers instead, each
an anonymous mapping advised ``MADV_HUGEPAGE`` (transparent huge pages are in ``madvise``
mode on common hosts: 512 times fewer faults), and hands one out again only when nothing
refers to the bytes of its last lease any more.

How "nothing refers" is known: every lease is a fresh numpy view over the buffer, and the
pool keeps only a weak reference to it. Whatever is built over the lease -- memoryview
slices, the cache's read target, tensors from ``torch.frombuffer`` and their views -- holds
a buffer export that keeps the lease alive; once the last of them is gone the weak
reference dies and the buffer is free. A buffer whose lease is still alive (a tensor kept
by a caller, a traceback) is simply never reused, so no live tensor can see new bytes.

The pool holds at most ``capacity_bytes`` of buffers, in use and free together (the
engine's memory budget): before it maps a new buffer over the capacity it unmaps free ones,
and when every buffer is in use it hands out a plain, unpooled one.

A :class:`Lease` (:meth:`BufferPool.lease`) also gives the buffer's whole memory apart from
the lease, and a memo kept with the buffer: objects built over that memory do not keep the
lease alive, so a caller that memoizes what it built there (the engine's streamed chunks,
rebuilt for nothing each time the same verified chunk lands in the same buffer again) must
keep the lease itself for as long as the objects are in use, and use them only then.
"""

from __future__ import annotations

import mmap
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Buffers of at least a huge page are mapped in multiples of one (sizes that differ a little
#: share them); smaller ones in multiples of ``SMALL_GRANULE_BYTES``.
GRANULE_BYTES = 2 << 20
SMALL_GRANULE_BYTES = 64 << 10


def size_class(size_bytes: int) -> int:
    """The capacity of the buffer that serves ``size_bytes``."""
    granule = GRANULE_BYTES if size_bytes >= GRANULE_BYTES else SMALL_GRANULE_BYTES
    return max(1, -(-size_bytes // granule)) * granule


@dataclass(eq=False)
class _Buffer:
    array: np.ndarray
    lease: weakref.ref[np.ndarray] | None = None
    memo: dict[Any, Any] = field(default_factory=dict)

    @property
    def capacity(self) -> int:
        return int(self.array.nbytes)

    def free(self) -> bool:
        return self.lease is None or self.lease() is None


@dataclass(frozen=True)
class Lease:
    """One lease of a buffer: ``view`` (exactly the size asked; the buffer is in use while
    anything refers to it), and for a pooled buffer its whole memory (``base``, which does
    not hold the lease) and the buffer's ``memo`` (both None for an unpooled buffer)."""

    view: memoryview
    base: memoryview | None = None
    memo: dict[Any, Any] | None = None


@dataclass
class PoolStats:
    """What the pool did since it was made."""

    #: Leases served by a buffer used before / by a newly mapped one / unpooled.
    reused: int = 0
    mapped: int = 0
    unpooled: int = 0
    #: Free buffers unmapped to stay within the capacity.
    unmapped: int = 0


def _map(size_bytes: int) -> np.ndarray:
    region = mmap.mmap(-1, size_bytes)
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None:
        try:
            region.madvise(advice)
        except OSError:  # THP disabled or not supported: plain pages
            pass
    return np.frombuffer(region, dtype=np.uint8)


class BufferPool:
    """Reusable chunk buffers, at most ``capacity_bytes`` of them (in use and free).

    Example:
        >>> pool = BufferPool(64 << 20)
        >>> view = pool.take(3 << 20)
        >>> view.nbytes, view.readonly
        (3145728, False)
    """

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = int(capacity_bytes)
        self.stats = PoolStats()
        self._buffers: list[_Buffer] = []
        self._lock = threading.Lock()

    @property
    def pooled_bytes(self) -> int:
        """Bytes of every buffer the pool holds, in use or free."""
        return sum(b.capacity for b in self._buffers)

    def in_use(self) -> int:
        """Buffers whose last lease is still referenced."""
        with self._lock:
            return sum(not b.free() for b in self._buffers)

    def take(self, size_bytes: int) -> memoryview:
        """A writable buffer of exactly ``size_bytes`` (contents undefined)."""
        return self.lease(size_bytes).view

    def lease(self, size_bytes: int) -> Lease:
        """:meth:`take`, with the buffer's memory and memo (see the module doc)."""
        size = int(size_bytes)
        with self._lock:
            buffer = self._best_free(size)
            if buffer is not None:
                self.stats.reused += 1
            else:
                buffer = self._map_within_capacity(size)
            if buffer is None:
                self.stats.unpooled += 1
                return Lease(np.empty(size, dtype=np.uint8).data)
            lease = buffer.array[:size]
            buffer.lease = weakref.ref(lease)
            return Lease(lease.data, buffer.array.data, buffer.memo)

    def clear(self) -> None:
        """Forget every free buffer (in-use ones are freed by their last user)."""
        with self._lock:
            self._buffers = [b for b in self._buffers if not b.free()]

    def _best_free(self, size: int) -> _Buffer | None:
        """The smallest free buffer that holds ``size`` (a bigger one serves when its class
        has none free: unmapping and mapping afresh would cost the faults the pool saves)."""
        fitting = [b for b in self._buffers if b.capacity >= size and b.free()]
        return min(fitting, key=lambda b: b.capacity, default=None)

    def _map_within_capacity(self, size: int) -> _Buffer | None:
        capacity = size_class(size)
        if capacity > self.capacity_bytes:
            return None
        free = sorted((b for b in self._buffers if b.free()), key=lambda b: b.capacity)
        while self.pooled_bytes + capacity > self.capacity_bytes and free:
            self._buffers.remove(free.pop())  # the largest free one first
            self.stats.unmapped += 1
        if self.pooled_bytes + capacity > self.capacity_bytes:
            return None
        buffer = _Buffer(_map(capacity))
        self._buffers.append(buffer)
        self.stats.mapped += 1
        return buffer

"""Turning a chunk into tensors: fetch (into a reused buffer for streamed chunks), check the
size, deserialize zero-copy, widen to the compute dtype."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

import torch

from sw_core.chunks.manifest import ChunkInfo, Manifest
from sw_core.engine.io.sources import ChunkSource
from sw_core.engine.memory.budget import ResidencyPlan
from sw_core.engine.memory.buffers import GRANULE_BYTES, BufferPool
from sw_core.engine.model.dtypes import Packing, Tensors, to_compute
from sw_core.engine.model.skeleton import Skeleton
from sw_core.exceptions import SecurityError


def pool_bytes(
    manifest: Manifest,
    plan: ResidencyPlan,
    expand: float,
    prefetch_count: int,
    sizes: dict[str, int] | None = None,
) -> int:
    """What the buffer pool may hold: the plan's window for streamed chunks (the only ones
    read into pooled buffers; it counts the chunk just released, whose buffer is still
    referenced for a moment), the stored copy of one chunk being widened, and the rounding
    of each buffer to its size class. Kept chunks, which fill the rest of the budget, have
    memory of their own, so chunk memory stays within the budget plus that slack."""
    streamed = [c for c in manifest.chunks if c.name not in plan.keep]
    if not streamed:
        return 0
    rounding = GRANULE_BYTES * (prefetch_count + 3)
    if sizes is not None:
        # packed tensors kept packed are used in place in their buffer (the window counts
        # them); a chunk widened on arrival holds its stored buffer besides the window
        widened = [c.size_bytes for c in streamed if sizes.get(c.name, 0) > c.size_bytes]
        return plan.window_bytes + max(widened, default=0) + rounding
    largest = max(c.size_bytes for c in streamed)
    narrow_copy = largest if expand > 1 else 0
    return plan.window_bytes + narrow_copy + rounding


def _takes_out(source: ChunkSource) -> bool:
    """Whether ``source.fetch`` takes ``out=`` (a subclass may override it without)."""
    try:
        return "out" in inspect.signature(source.fetch).parameters
    except (TypeError, ValueError):
        return False


class ChunkMaterializer:
    """The residency's loader: ``await loader(chunk)`` gives the chunk's tensors.

    Args:
        source: the :class:`~sw_core.engine.io.sources.ChunkSource`.
        skeleton: deserializes and checks a chunk's tensors.
        device: where the tensors go.
        buffers: the pool streamed chunks are read into (kept chunks get their own memory).
        keep: names of the chunks the plan keeps resident.
        dtype: the compute dtype (None: as stored).
        packing: which packed tensors stay packed (None: all are widened).
    """

    def __init__(
        self,
        source: ChunkSource,
        skeleton: Skeleton,
        device: torch.device,
        buffers: BufferPool,
        keep: frozenset[str],
        dtype: torch.dtype | None,
        packing: Packing | None = None,
    ) -> None:
        self.source = source
        self.skeleton = skeleton
        self.device = device
        self.buffers = buffers
        self.keep = keep
        self.dtype = dtype
        self.packing = packing
        self._reads_into = _takes_out(source)

    async def __call__(self, chunk: ChunkInfo) -> Tensors:
        streamed = chunk.name not in self.keep
        if streamed and self._reads_into:
            fetch_into: Callable[..., Awaitable[bytearray | memoryview]] = self.source.fetch
            data = await fetch_into(chunk, out=self.buffers.take(chunk.size_bytes))
        else:
            data = await self.source.fetch(chunk)
        if len(data) != chunk.size_bytes:
            raise SecurityError(
                f"chunk {chunk.name!r} is {len(data)} bytes, the manifest says {chunk.size_bytes}"
            )
        take = self.buffers.take if streamed else None
        if self.device.type == "cpu":
            # zero-copy, tens of microseconds: cheaper than a hop to a worker thread and back;
            # widening a streamed chunk (a few ms) runs here too, off the compute thread
            tensors = self.skeleton.deserialize(chunk, data)
            return to_compute(tensors, self.dtype, take, self.packing)
        tensors = await asyncio.to_thread(self.skeleton.deserialize, chunk, data)
        return await asyncio.to_thread(to_compute, tensors, self.dtype, None, self.packing)

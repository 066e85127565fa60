"""The cache's accounting snapshot and its asyncio API: each call runs the synchronous one on
a worker thread (the engine reads big values faster with the sync client)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CacheInfo:
    """A snapshot of the cache's accounting (counters are totals across all clients)."""

    used_bytes: int
    budget_bytes: int
    chunks: int
    hits: int
    misses: int
    evictions: int
    corruptions: int
    #: Misses the cache would not take in (sweep reads past it, :mod:`sw_core.cache.admission`).
    refusals: int = 0


class AsyncCacheAPI:
    """``aget``/``aput``/... for asyncio callers of :class:`~sw_core.cache.ChunkCache`."""

    get: Any
    lookup: Any
    put: Any
    contains: Any
    delete: Any
    info: Any
    clear: Any

    async def aget(
        self,
        chunk_id: str,
        *,
        out: bytearray | memoryview | None = None,
        count: bool = True,
        blake3: str | None = None,
    ) -> memoryview | None:
        """:meth:`get` on a worker thread."""
        return await asyncio.to_thread(self.get, chunk_id, out=out, count=count, blake3=blake3)

    async def aput(
        self,
        chunk_id: str,
        data: bytes | bytearray | memoryview,
        *,
        verify: bool = True,
        blake3: str | None = None,
    ) -> bool:
        """:meth:`put` on a worker thread."""
        return await asyncio.to_thread(self.put, chunk_id, data, verify=verify, blake3=blake3)

    async def alookup(
        self,
        chunk_id: str,
        size_bytes: int,
        *,
        out: bytearray | memoryview | None = None,
        blake3: str | None = None,
    ) -> Any:
        """:meth:`lookup` on a worker thread."""
        return await asyncio.to_thread(self.lookup, chunk_id, size_bytes, out=out, blake3=blake3)

    async def acontains(self, chunk_id: str) -> bool:
        """:meth:`contains` on a worker thread."""
        return await asyncio.to_thread(self.contains, chunk_id)

    async def adelete(self, chunk_id: str) -> bool:
        """:meth:`delete` on a worker thread."""
        return await asyncio.to_thread(self.delete, chunk_id)

    async def ainfo(self) -> CacheInfo:
        """:meth:`info` on a worker thread."""
        return await asyncio.to_thread(self.info)

    async def aclear(self) -> None:
        """:meth:`clear` on a worker thread."""
        await asyncio.to_thread(self.clear)

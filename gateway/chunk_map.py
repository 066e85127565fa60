"""Where each model's chunks are now: resident in a worker, in the Redis cache, or only in
storage -- the strips of the status page, one per model, chunks in execution order.

The chunk lists come from each model's manifest (read once, :class:`TokenCounter`), cache
presence from one pipelined ``EXISTS`` per cache shard, residency from the
``resident_chunks`` field of the inference workers' heartbeats. Computed at most every
:data:`TTL_S` seconds, for at most :data:`MAX_MODELS` models of :data:`MAX_CHUNKS` chunks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from gateway.tokens import TokenCounter
from sw_core.ops.resident import decode_resident
from sw_core.settings import Settings

log = logging.getLogger(__name__)
TTL_S = 2.0
MAX_MODELS = 16
MAX_CHUNKS = 512
#: States of a chunk: in a worker's memory (and maybe the cache too), in the cache, neither.
RESIDENT, CACHED, STORAGE = "resident", "cache", "storage"


class ChunkMap:
    """Computes and caches the chunk strips."""

    def __init__(self, settings: Settings, counter: TokenCounter) -> None:
        self.settings = settings
        self.counter = counter
        self._cache: Any = None
        self._lock = asyncio.Lock()
        self._cached: tuple[float, dict[str, Any]] | None = None

    async def strips(self, models: dict[str, str], resident_fields: list[Any]) -> dict[str, Any]:
        """``{model: {"chunks": [[name, bytes, state], ...], "more": n}}`` (``more``: chunks
        left out past :data:`MAX_CHUNKS`)."""
        async with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= TTL_S:
                self._cached = (now, await self._compute(models, resident_fields))
            return self._cached[1]

    async def _compute(self, models: dict[str, str], fields: list[Any]) -> dict[str, Any]:
        resident: dict[str, set[str]] = {}
        for field in fields:
            for model, names in decode_resident(field).items():
                resident.setdefault(model, set()).update(names)
        out: dict[str, Any] = {}
        for model in sorted(models)[:MAX_MODELS]:
            facts = await self.counter.facts(model, models[model])
            chunks = facts.chunks[:MAX_CHUNKS]
            try:
                in_cache = await asyncio.to_thread(self._cached_ids, [c.sha256 for c in chunks])
            except Exception as exc:  # the cache's Redis away: states unknown, not an error
                log.debug("chunk map: cache presence of %s: %s", model, exc)
                in_cache = [False] * len(chunks)
            here = resident.get(model, set())
            out[model] = {
                "chunks": [
                    [c.name[:64], c.size_bytes, _state(c.name in here, cached)]
                    for c, cached in zip(chunks, in_cache, strict=True)
                ],
                "more": max(0, len(facts.chunks) - MAX_CHUNKS),
            }
        return out

    def _cached_ids(self, ids: list[str]) -> list[bool]:
        from sw_core.cache import ChunkCache
        from sw_core.cache.presence import cached

        if not ids:
            return []
        if self._cache is None:
            self._cache = ChunkCache.from_settings(self.settings)
        return cached(self._cache, ids)

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None


def _state(resident: bool, cached: bool) -> str:
    return RESIDENT if resident else CACHED if cached else STORAGE

"""The streaming engine: transformers models run block by block from verified chunks.

Public API:

- :class:`StreamingEngine` -- one chunked model; ``run`` / ``run_async(task, requests)``
  for ``embed``, ``forward`` and ``generate`` batches; ``warmup``, ``clear_cache``,
  ``cache_info``; materialized bytes and their peak under ``memory_budget_mb``.
- :class:`StreamingBertModel`, :class:`StreamingGPTModel`, :class:`StreamingLlamaModel`,
  :class:`StreamingT5Model` -- the async library facade.
- Chunk sources: :class:`ChunkSource`, :class:`StoreChunkSource`, :class:`CachedChunkSource`.
"""

from __future__ import annotations

from sw_core.engine.engine import StreamingEngine
from sw_core.engine.facade import (
    StreamingBertModel,
    StreamingGPTModel,
    StreamingLlamaModel,
    StreamingModel,
    StreamingT5Model,
)
from sw_core.engine.io.sources import CachedChunkSource, ChunkSource, StoreChunkSource
from sw_core.engine.memory.budget import ResidencyPlan, plan_residency
from sw_core.engine.setup import make_source, resolve_device

__all__ = [
    "CachedChunkSource",
    "ChunkSource",
    "ResidencyPlan",
    "StoreChunkSource",
    "StreamingBertModel",
    "StreamingEngine",
    "StreamingGPTModel",
    "StreamingLlamaModel",
    "StreamingModel",
    "StreamingT5Model",
    "make_source",
    "plan_residency",
    "resolve_device",
]

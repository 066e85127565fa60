"""What :meth:`StreamingEngine.cache_info` reports: hits, misses, memory, resident chunks,
timings, buffer reuse and the shared chunk cache's accounting."""

from __future__ import annotations

from typing import Any

from sw_core.utils import mib


def cache_report(engine: Any) -> dict[str, Any]:
    """The report of a loaded :class:`~sw_core.engine.engine.StreamingEngine`."""
    stats = engine.residency.stats
    uses = stats.hits + stats.misses
    info: dict[str, Any] = {
        "model": engine.name,
        "mode": engine.plan.mode,
        "embed_pooling": engine.sentence.describe(),
        "device": str(engine.device),
        "hits": stats.hits,
        "misses": stats.misses,
        "hit_rate": stats.hits / uses if uses else 0.0,
        "prefetched": stats.prefetched,
        "prefetch_wasted": stats.wasted,
        "refetched": stats.refetched,
        "memory_mb": mib(engine.residency.materialized_bytes),
        "peak_memory_mb": mib(engine.residency.peak_bytes),
        "budget_mb": mib(engine.residency.budget_bytes),
        "resident_chunks": engine.residency.resident_chunks(),
        "merged_tensors": sorted(engine.runtime.merged),
        "loads": stats.loads,
        "loaded_mb": mib(stats.loaded_bytes),
        "load_s": stats.load_s,
        "wait_s": stats.wait_s,
        "buffers_reused": engine.buffers.stats.reused,
        "buffers_mapped": engine.buffers.stats.mapped,
        "direct_io": engine.direct_io,
        "sweeps": engine.sweeps,
    }
    cache = getattr(engine.source, "cache", None)
    if cache is not None and hasattr(cache, "info"):
        try:
            info["chunk_cache"] = cache.info()
        except Exception as exc:  # the shared cache is optional for this report
            info["chunk_cache"] = {"error": str(exc)}
    return info

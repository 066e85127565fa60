"""Hits per sweep, from the per-model sweep counters (``Keys.stats_sweeps``).

A *sweep* is one model call of an inference worker that read chunks from outside its own
memory: one decode step, one static batch's pass. Workers count, per model, the sweeps and
the chunks and bytes those sweeps read, and how many of them the shared chunk cache served;
the ratios say how much of each sweep the cache holds (about ``C/N`` for a model of ``N``
bytes swept through a cache of ``C``, see :mod:`sw_core.cache.admission`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sw_core import counters as names
from sw_core.ops.replies import as_int, as_text


def sweep_stats(raw: Mapping[Any, Any]) -> dict[str, Any]:
    """``sweeps_by_model`` (model -> the five counters plus ``hit_rate``, the share of the
    bytes the cache served, and ``hits_per_sweep``) and the same added up over the models:
    ``sweeps``, ``sweep_reads``, ``sweep_hits``, ``sweep_bytes``, ``sweep_hit_bytes``,
    ``sweep_hit_rate``, ``hits_per_sweep``, ``sweep_mb``."""
    by_model: dict[str, dict[str, Any]] = {}
    for field, value in raw.items():
        name, _, model = as_text(field).partition(":")
        if name in names.SWEEP_COUNTERS and model:
            by_model.setdefault(model, dict.fromkeys(names.SWEEP_COUNTERS, 0))[name] = as_int(value)
    totals = dict.fromkeys(names.SWEEP_COUNTERS, 0)
    for counts in by_model.values():
        for name in names.SWEEP_COUNTERS:
            totals[name] += counts[name]
        counts.update(_ratios(counts))
    ratios = _ratios(totals)
    return {
        "sweeps_by_model": dict(sorted(by_model.items())),
        "sweeps": totals[names.SWEEPS],
        "sweep_reads": totals[names.SWEEP_READS],
        "sweep_hits": totals[names.SWEEP_HITS],
        "sweep_bytes": totals[names.SWEEP_BYTES],
        "sweep_hit_bytes": totals[names.SWEEP_HIT_BYTES],
        "sweep_hit_rate": ratios["hit_rate"],
        "hits_per_sweep": ratios["hits_per_sweep"],
        "sweep_mb": ratios["sweep_mb"],
    }


def _ratios(counts: Mapping[str, int]) -> dict[str, float]:
    sweeps, read = counts[names.SWEEPS], counts[names.SWEEP_BYTES]
    return {
        "hit_rate": counts[names.SWEEP_HIT_BYTES] / read if read else 0.0,
        "hits_per_sweep": counts[names.SWEEP_HITS] / sweeps if sweeps else 0.0,
        "sweep_mb": read / sweeps / (1 << 20) if sweeps else 0.0,
    }

"""What the status page shows: the monitor's numbers plus the gateway's own counters, every
list and map cut to a fixed size (a response of ``/api/status`` is bounded however many
models, workers or error types there are).

The cluster numbers come from :class:`~sw_core.ops.monitor.StreamingMonitor` (the same
snapshot ``sw monitor`` draws), read at most once a second however many pages poll.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sw_core.ops.monitor import StreamingMonitor
from sw_core.ops.resident import RESIDENT_FIELD
from sw_core.settings import Settings

#: How long one monitor snapshot is reused.
SNAPSHOT_TTL_S = 1.0
#: Monitor fields the page shows.
CLUSTER_FIELDS = (
    "total_requests",
    "completed",
    "failed",
    "retried",
    "dead_lettered",
    "cancelled",
    "expired",
    "errors",
    "errors_by_type",
    "error_rate",
    "queue_length",
    "pending",
    "scheduled_retries",
    "dead_letters",
    "cache_hits",
    "cache_misses",
    "cache_hit_rate",
    "cache_bytes",
    "cache_chunks",
    "cache_budget_bytes",
    "live_workers",
    "workers_by_kind",
    "throughput_jobs_s",
    "latency",
    "alert",
    "alert_reason",
)
WORKER_FIELDS = ("id", "kind", "host", "pid", "current", "age_s")
#: Most entries of each list or map the page gets (the counts say how many there are).
MAX_MODELS = 64
MAX_WORKERS = 64
MAX_MAP_ENTRIES = 32
#: Longest text of one value (a worker id, an alert reason ...).
MAX_TEXT = 256


def bounded_map(value: Any, limit: int = MAX_MAP_ENTRIES) -> dict[str, Any]:
    """The first ``limit`` entries of a map, keys and text values cut to :data:`MAX_TEXT`."""
    if not isinstance(value, dict):
        return {}
    return {str(k)[:MAX_TEXT]: short(v) for k, v in list(value.items())[:limit]}


def short(value: Any) -> Any:
    """Text cut to :data:`MAX_TEXT`; maps bounded; numbers and others as they are."""
    if isinstance(value, str):
        return value[:MAX_TEXT]
    if isinstance(value, dict):
        return bounded_map(value)
    return value


class StatusSource:
    """Cached monitor snapshots, with each worker's resident chunks kept aside for the
    chunk map (not sent to the page as they are)."""

    def __init__(self, settings: Settings) -> None:
        self.monitor = StreamingMonitor(settings=settings)
        self._lock = asyncio.Lock()
        self._cached: tuple[float, dict[str, Any], list[Any]] | None = None

    async def cluster(self) -> dict[str, Any]:
        """The monitor's numbers (at most :data:`SNAPSHOT_TTL_S` old), bounded."""
        return (await self._snapshot())[1]

    async def resident_fields(self) -> list[Any]:
        """The ``resident_chunks`` field of each live inference worker."""
        return (await self._snapshot())[2]

    async def _snapshot(self) -> tuple[float, dict[str, Any], list[Any]]:
        async with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= SNAPSHOT_TTL_S:
                stats = await self.monitor.get_stats()
                out = {name: short(stats.get(name)) for name in CLUSTER_FIELDS}
                workers = stats["workers"]
                out["workers"] = [
                    {name: short(w.get(name)) for name in WORKER_FIELDS}
                    for w in workers[:MAX_WORKERS]
                ]
                out["latency"] = bounded_map(stats.get("latency"))
                out["timestamp"] = stats["timestamp"]
                resident = [w.get(RESIDENT_FIELD) for w in workers if w.get("kind") == "inference"]
                self._cached = (now, out, resident)
            return self._cached

    async def close(self) -> None:
        await self.monitor.aclose()

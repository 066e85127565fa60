"""What the status page shows: the monitor's numbers plus the gateway's own counters.

The cluster numbers come from :class:`~sw_core.ops.monitor.StreamingMonitor` (the same
snapshot ``sw monitor`` draws), read at most once a second however many pages poll.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from sw_core.ops.monitor import StreamingMonitor
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


class GatewayCounters:
    """Requests served by this gateway, by route and by status; requests open now."""

    def __init__(self) -> None:
        self.started = time.time()
        self.by_status: Counter[int] = Counter()
        self.by_route: Counter[str] = Counter()
        self.open_requests = 0

    def count(self, route: str, status: int) -> None:
        self.by_route[route] += 1
        self.by_status[status] += 1

    def as_dict(self) -> dict[str, Any]:
        errors = sum(n for status, n in self.by_status.items() if status >= 400)
        return {
            "uptime_s": round(time.time() - self.started, 1),
            "requests": sum(self.by_route.values()),
            "errors": errors,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "by_route": dict(sorted(self.by_route.items())),
            "open_requests": self.open_requests,
        }


class StatusSource:
    """Cached monitor snapshots."""

    def __init__(self, settings: Settings) -> None:
        self.monitor = StreamingMonitor(settings=settings)
        self._lock = asyncio.Lock()
        self._cached: tuple[float, dict[str, Any]] | None = None

    async def cluster(self) -> dict[str, Any]:
        """The monitor's numbers (at most :data:`SNAPSHOT_TTL_S` old)."""
        async with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= SNAPSHOT_TTL_S:
                stats = await self.monitor.get_stats()
                out = {name: stats.get(name) for name in CLUSTER_FIELDS}
                out["workers"] = [
                    {name: w.get(name) for name in WORKER_FIELDS} for w in stats["workers"]
                ]
                out["timestamp"] = stats["timestamp"]
                self._cached = (now, out)
            return self._cached[1]

    async def close(self) -> None:
        await self.monitor.aclose()

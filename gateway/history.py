"""The last minutes of the numbers the status page charts, sampled in the background.

Every :data:`SAMPLE_S` seconds the gateway takes one sample: tokens per second this gateway
served, the median time to first token of the streams that began since the last sample,
the queue depth (queued + running jobs) and the cache hit rate over the interval (hits /
lookups since the last sample; None when nothing was looked up). :data:`KEEP` samples are
kept (a fixed size), so the charts show the last five minutes from the moment the page
opens, whoever watched before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.metrics import GatewayCounters

log = logging.getLogger(__name__)
#: Seconds between two samples.
SAMPLE_S = 2.0
#: Samples kept (5 minutes).
KEEP = 150
#: The series of a sample, in order.
SERIES = ("t", "tokens_per_s", "ttft_s", "queue_depth", "cache_hit_rate")


class History:
    """A ring of samples; :meth:`run` fills it until cancelled."""

    def __init__(self, counters: GatewayCounters) -> None:
        self.counters = counters
        self.samples: deque[tuple[float, float | None, float | None, int | None, float | None]]
        self.samples = deque(maxlen=KEEP)
        self._last: tuple[float, int, int, int] | None = None  # t, tokens, hits, lookups

    def sample(self, cluster: dict[str, Any] | None, now: float | None = None) -> None:
        """Add one sample from a monitor snapshot (None: the cluster could not be read)."""
        now = time.time() if now is None else now
        tokens = self.counters.completion_tokens
        hits = int((cluster or {}).get("cache_hits") or 0)
        lookups = hits + int((cluster or {}).get("cache_misses") or 0)
        last, self._last = self._last, (now, tokens, hits, lookups)
        tokens_per_s = hit_rate = ttft = None
        if last is not None and now > last[0]:
            tokens_per_s = round(max(0, tokens - last[1]) / (now - last[0]), 3)
            if lookups > last[3] and cluster is not None:
                hit_rate = round(max(0, hits - last[2]) / (lookups - last[3]), 4)
            recent = [s for t, s in self.counters.recent_ttft if t > last[0]]
            if recent:
                ttft = round(statistics.median(recent), 4)
        depth = None
        if cluster is not None:
            depth = int(cluster.get("queue_length") or 0) + int(cluster.get("pending") or 0)
        self.samples.append((round(now, 3), tokens_per_s, ttft, depth, hit_rate))

    def as_dict(self) -> dict[str, Any]:
        """``{"sample_s", "series": [...names], "samples": [[t, ...], ...]}``, oldest first."""
        return {"sample_s": SAMPLE_S, "series": list(SERIES), "samples": list(self.samples)}

    async def run(self, read: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        """Sample every :data:`SAMPLE_S` seconds with ``read`` (the monitor snapshot)."""
        while True:
            cluster: dict[str, Any] | None = None
            try:
                cluster = await read()
            except Exception as exc:  # Redis away: the gap shows on the charts
                log.debug("status sample failed: %s", exc)
            self.sample(cluster)
            await asyncio.sleep(SAMPLE_S)


async def stop(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task and wait for it."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task

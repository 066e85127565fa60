"""Per-task latency histograms kept in Redis, and percentiles read back from them.

Every process that finishes work records its latency with :func:`record_latency` (asyncio
client) or :func:`record_latency_sync`: one Lua call adds the observations of one task to
the hash ``sw:latency:<task>`` atomically, so histograms from any number of workers add up
exactly. The hash holds one field per bucket of :data:`LATENCY_BUCKETS_S` (``bucket:0.5``
counts observations in (0.25 s, 0.5 s]; ``bucket:+Inf`` those above the last edge -- *not*
cumulative), plus ``count``, ``sum_us`` and ``max_us``. The set ``sw:latency-tasks`` lists
the tasks that have one.

:class:`Histogram` is the read side: p50/p95/p99 are estimated from the buckets the way
Prometheus' ``histogram_quantile`` does (linear inside a bucket), and never above the
largest observation.

Example:
    >>> h = Histogram.from_observations([0.02, 0.03, 0.2])
    >>> h.count, round(h.quantile(0.5), 4), h.quantile(0.99)
    (3, 0.0375, 0.2)
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sw_core.keys import Keys
from sw_core.lua_scripts import lua_source

if TYPE_CHECKING:
    import redis as sync_redis
    import redis.asyncio as aioredis

    from sw_core.pipeline.jobs import Job

log = logging.getLogger(__name__)

#: Upper edges, in seconds, of the latency buckets; one more bucket (+Inf) follows the last.
#: They span a cached embedding (a few ms) to a long generation (minutes).
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
#: Name of the bucket above the last edge.
INF_BUCKET = "bucket:+Inf"
#: Percentiles the monitor and ``sw stats`` report.
REPORTED_QUANTILES: tuple[tuple[str, float], ...] = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))


def bucket_field(edge_s: float) -> str:
    """Hash field of the bucket whose upper edge is ``edge_s`` (``bucket:0.25``)."""
    return INF_BUCKET if math.isinf(edge_s) else f"bucket:{edge_s:g}"


BUCKET_FIELDS: tuple[str, ...] = (*(bucket_field(e) for e in LATENCY_BUCKETS_S), INF_BUCKET)


def bucket_of(seconds: float) -> str:
    """Field of the bucket an observation of ``seconds`` falls into (edges are inclusive)."""
    return BUCKET_FIELDS[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)]


def _script_args(task: str, durations_s: Iterable[float]) -> list[Any]:
    args: list[Any] = [task]
    for seconds in durations_s:
        if not math.isfinite(seconds):
            raise ValueError(f"latency must be a finite number of seconds, got {seconds}")
        seconds = max(0.0, float(seconds))
        args += [bucket_of(seconds), round(seconds * 1e6)]
    return args


async def record_latency(
    redis: aioredis.Redis, task: str, *durations_s: float, keys: Keys | None = None
) -> int:
    """Add one or more latency observations (seconds) of ``task``; one atomic Lua call.

    Args:
        redis: a ``redis.asyncio.Redis`` client.
        task: what was timed, e.g. ``embed`` or ``generate``.
        durations_s: the observations; negative values count as 0.
        keys: key names (prefix ``sw`` unless given).

    Returns:
        The task's observation count after the update (0 when nothing was given).
    """
    if not durations_s:
        return 0
    keys = keys or Keys()
    script = redis.register_script(lua_source("metrics_observe"))
    args = _script_args(task, durations_s)
    return int(await script(keys=[keys.latency(task), keys.latency_tasks], args=args))


def record_latency_sync(
    redis: sync_redis.Redis, task: str, *durations_s: float, keys: Keys | None = None
) -> int:
    """:func:`record_latency` for a synchronous ``redis.Redis`` client."""
    if not durations_s:
        return 0
    keys = keys or Keys()
    script = redis.register_script(lua_source("metrics_observe"))
    args = _script_args(task, durations_s)
    return int(script(keys=[keys.latency(task), keys.latency_tasks], args=args))


async def record_job_latencies(
    redis: aioredis.Redis,
    jobs: Iterable[Job],
    *,
    keys: Keys | None = None,
    now_ms: int | None = None,
) -> None:
    """Record the end-to-end latency of finished jobs (submission to now), per task.

    Meant for the worker right after results are stored: ``jobs`` are objects with
    ``task`` and ``submitted_ms`` (:class:`sw_core.pipeline.jobs.Job`). One Lua call per task. Best
    effort: a failure is logged, never raised, so it cannot fail a finished job.
    """
    now = time.time() * 1000 if now_ms is None else now_ms
    by_task: dict[str, list[float]] = {}
    for job in jobs:
        if job.submitted_ms:
            by_task.setdefault(job.task, []).append((now - job.submitted_ms) / 1000)
    for task, durations_s in by_task.items():
        try:
            await record_latency(redis, task, *durations_s, keys=keys)
        except Exception as exc:
            log.warning("recording %d %s latencies failed: %s", len(durations_s), task, exc)


@dataclass
class Histogram:
    """A latency histogram: non-cumulative counts per bucket of :data:`LATENCY_BUCKETS_S`."""

    #: One count per bucket, the +Inf bucket last (``len(LATENCY_BUCKETS_S) + 1`` values).
    counts: list[int] = field(default_factory=lambda: [0] * len(BUCKET_FIELDS))
    sum_s: float = 0.0
    #: Largest observation, None when unknown.
    max_s: float | None = None

    @classmethod
    def from_hash(cls, raw: Mapping[Any, Any]) -> Histogram:
        """From ``HGETALL sw:latency:<task>`` (bytes or str names and values)."""
        data = {_text(k): _text(v) for k, v in raw.items()}
        counts = [int(data.get(name, 0) or 0) for name in BUCKET_FIELDS]
        sum_s = int(data.get("sum_us", 0) or 0) / 1e6
        max_us = data.get("max_us")
        return cls(counts, sum_s, int(max_us) / 1e6 if max_us not in (None, "") else None)

    @classmethod
    def from_observations(cls, durations_s: Iterable[float]) -> Histogram:
        """Built in memory, exactly as :func:`record_latency` would store it."""
        hist = cls()
        for seconds in durations_s:
            seconds = max(0.0, float(seconds))
            hist.counts[BUCKET_FIELDS.index(bucket_of(seconds))] += 1
            hist.sum_s += round(seconds * 1e6) / 1e6
            hist.max_s = seconds if hist.max_s is None else max(hist.max_s, seconds)
        return hist

    @property
    def count(self) -> int:
        return sum(self.counts)

    @property
    def mean_s(self) -> float | None:
        return self.sum_s / self.count if self.count else None

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper edge, observations <= edge)`` pairs ending with ``(inf, count)``."""
        out: list[tuple[float, int]] = []
        running = 0
        for edge, n in zip((*LATENCY_BUCKETS_S, math.inf), self.counts, strict=True):
            running += n
            out.append((edge, running))
        return out

    def quantile(self, q: float) -> float | None:
        """Estimated ``q``-quantile in seconds (``q`` in [0, 1]); None without observations.

        Linear interpolation inside the bucket holding the rank; the +Inf bucket reports the
        largest observation. The estimate never exceeds the largest observation.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be within [0, 1], got {q}")
        total = self.count
        if not total:
            return None
        rank = q * total
        below = 0
        lower = 0.0
        value = self.max_s if self.max_s is not None else LATENCY_BUCKETS_S[-1]
        for i, n in enumerate(self.counts):
            upper = LATENCY_BUCKETS_S[i] if i < len(LATENCY_BUCKETS_S) else None
            if n and below + n >= rank:
                if upper is None:
                    value = self.max_s if self.max_s is not None else lower
                else:
                    value = lower + (upper - lower) * max(0.0, rank - below) / n
                break
            below += n
            if upper is not None:
                lower = upper
        if self.max_s is not None:
            value = min(value, self.max_s)
        return value

    def summary(self) -> dict[str, float | int | None]:
        """``count``, ``mean_s``, ``max_s`` and ``p50``/``p95``/``p99`` (seconds)."""
        out: dict[str, float | int | None] = {
            "count": self.count,
            "mean_s": self.mean_s,
            "max_s": self.max_s,
        }
        for name, q in REPORTED_QUANTILES:
            out[name] = self.quantile(q)
        return out


async def read_latency(redis: aioredis.Redis, keys: Keys | None = None) -> dict[str, Histogram]:
    """Every task's histogram, by task name (asyncio client)."""
    keys = keys or Keys()
    # redis-py types set replies as sync|async unions for both clients (redis-py #2399)
    tasks = sorted(_text(t) for t in await redis.smembers(keys.latency_tasks))  # type: ignore[misc]
    if not tasks:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for task in tasks:
            pipe.hgetall(keys.latency(task))
        raws = await pipe.execute()
    return {task: Histogram.from_hash(raw) for task, raw in zip(tasks, raws, strict=True)}


def read_latency_sync(redis: sync_redis.Redis, keys: Keys | None = None) -> dict[str, Histogram]:
    """:func:`read_latency` for a synchronous client."""
    keys = keys or Keys()
    # redis-py types set replies as sync|async unions for both clients (redis-py #2399)
    tasks = sorted(_text(t) for t in redis.smembers(keys.latency_tasks))  # type: ignore[union-attr]
    if not tasks:
        return {}
    with redis.pipeline(transaction=False) as pipe:
        for task in tasks:
            pipe.hgetall(keys.latency(task))
        raws = pipe.execute()
    return {task: Histogram.from_hash(raw) for task, raw in zip(tasks, raws, strict=True)}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)

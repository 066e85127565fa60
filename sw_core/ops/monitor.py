"""Cluster-wide numbers for people and probes: one snapshot of the system read from Redis.

:class:`StreamingMonitor` reads the counters every process adds to ``sw:stats``, the queue
state of the jobs stream and its consumer group, scheduled retries, dead letters, worker
heartbeats, the chunk cache's accounting and the latency histograms, in two pipelined round
trips, and returns them as one plain dict (see :meth:`StreamingMonitor.get_stats`).

Example:
    >>> stats = StreamingMonitor("redis://127.0.0.1:6379/0").get_stats_sync()  # doctest: +SKIP
    >>> if stats["alert"]:  # errors / requests of the last SW_ALERT_WINDOW_S seconds
    ...     page(stats["alert_reason"])  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sw_core import counters as counter_names
from sw_core.keys import Keys
from sw_core.lua_scripts import lua_source
from sw_core.ops.cache_stats import CacheStatsReader
from sw_core.ops.metrics import Histogram
from sw_core.ops.replies import (
    as_int,
    as_num,
    as_pairs,
    as_text,
    execute_async,
    execute_sync,
    find_group,
    group_lag,
    ok_or,
)
from sw_core.ops.sweeps import sweep_stats
from sw_core.queue_redis import queue_redis, queue_redis_sync
from sw_core.settings import Settings

if TYPE_CHECKING:
    import redis
    import redis.asyncio as aioredis

#: Counters of ``sw:stats`` that are always reported (0 when absent).
COUNTERS: tuple[str, ...] = (
    counter_names.TOTAL_REQUESTS,
    counter_names.COMPLETED,
    counter_names.FAILED,
    counter_names.RETRIED,
    counter_names.DEAD_LETTERED,
    counter_names.CANCELLED,
    counter_names.EXPIRED,
    counter_names.QUEUE_FULL,
    counter_names.ERRORS,
    counter_names.CACHE_HITS,
    counter_names.CACHE_MISSES,
    counter_names.CACHE_EVICTIONS,
    counter_names.CACHE_CORRUPTIONS,
    counter_names.STORAGE_BYTES_READ,
    counter_names.STORAGE_RETRIES,
    counter_names.STORAGE_FAILOVERS,
    counter_names.INTEGRITY_FAILURES,
)
#: Cache counters also kept by the cache itself in ``sw:cache:meta`` (stats name -> meta name).
CACHE_META_FIELDS: dict[str, str] = {
    counter_names.CACHE_HITS: "hits",
    counter_names.CACHE_MISSES: "misses",
    counter_names.CACHE_EVICTIONS: "evictions",
    counter_names.CACHE_CORRUPTIONS: "corruptions",
}
#: The queue length is counted exactly up to this many undelivered entries.
QUEUE_COUNT_CAP = 1_000_000
#: Worker hash fields shown as what a worker is doing, first present wins.
CURRENT_FIELDS: tuple[str, ...] = ("current_jobs", "current_job", "job_id", "current", "doing")


class StreamingMonitor:
    """Reads the whole system's state from Redis; cheap enough to call every second.

    Args:
        redis_url: the Redis to read (default: ``settings.redis_url``).
        settings: key prefix, heartbeat TTL, cache budget and ``alert_error_rate``
            (default: :meth:`Settings.from_env`).

    ``get_stats`` (asyncio) and ``get_stats_sync`` each use their own client, created on
    first use; close them with :meth:`aclose` / :meth:`close` (or use the object as a
    context manager). Throughput is measured between successive calls on one monitor.
    """

    def __init__(self, redis_url: str | None = None, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self.redis_url = redis_url or self.settings.redis_url
        #: Through Sentinel when configured, unless an explicit URL was given.
        self._queue_settings = (
            self.settings
            if redis_url is None
            else self.settings.replace(redis_url=redis_url, redis_sentinels="")
        )
        self.keys = Keys(self.settings.key_prefix)
        self._async: aioredis.Redis | None = None
        self._sync: redis.Redis | None = None
        self._previous: tuple[float, int] | None = None
        self._cache_stats = CacheStatsReader(self.settings, self.redis_url)

    # ------------------------------------------------------------------ clients
    def _async_client(self) -> aioredis.Redis:
        if self._async is None:
            self._async = queue_redis(
                self._queue_settings,
                socket_timeout=self.settings.timeout_seconds,
                socket_connect_timeout=min(5.0, self.settings.timeout_seconds),
            )
        return self._async

    def _sync_client(self) -> redis.Redis:
        if self._sync is None:
            self._sync = queue_redis_sync(
                self._queue_settings,
                socket_timeout=self.settings.timeout_seconds,
                socket_connect_timeout=min(5.0, self.settings.timeout_seconds),
            )
        return self._sync

    async def aclose(self) -> None:
        """Close the asyncio client (and the sync one, if any)."""
        if self._async is not None:
            await self._async.aclose()
            self._async = None
        self.close()

    def close(self) -> None:
        """Close the sync client and the cache's."""
        self._cache_stats.close()
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    async def __aenter__(self) -> StreamingMonitor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __enter__(self) -> StreamingMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reading
    async def get_stats(self) -> dict[str, Any]:
        """One snapshot of the system (asyncio).

        Returns:
            A dict with at least: ``total_requests``, ``completed``, ``failed``,
            ``retried``, ``dead_lettered``, ``errors`` (ints), ``errors_by_type``
            (type -> count), ``error_rate`` (``errors / total_requests`` since the start,
            0.0 without requests), ``recent_requests``, ``recent_errors`` and
            ``recent_error_rate`` (over the last ``alert_window_s`` seconds: what the alert
            judges), ``jobs_by_model`` (model -> status -> count), ``queue_length`` (entries no worker has read), ``pending`` (read,
            not yet acked), ``scheduled_retries``, ``dead_letters``, ``cache_hits``,
            ``cache_misses``, ``cache_evictions``, ``cache_hit_rate``, ``cache_bytes``,
            ``cache_chunks``, ``cache_budget_bytes``, ``cache_refusals`` (misses the cache
            did not take in: read past it), the sweep counters (``sweeps``,
            ``sweep_hit_rate``, ``hits_per_sweep``, ``sweep_mb``, ``sweeps_by_model``: see
            :func:`~sw_core.ops.sweeps.sweep_stats`), ``storage_bytes_read``,
            ``storage_failovers``, ``integrity_failures``, ``workers`` (list of dicts:
            ``id``, ``kind``, ``current``, ``age_s``, ``host``, ``pid`` and every field
            the worker reports), ``live_workers``, ``workers_by_kind``, ``latency``
            (task -> ``count``, ``mean_s``, ``max_s``, ``p50``, ``p95``, ``p99``),
            ``throughput_jobs_s`` (completed per second since the previous call, None on
            the first), ``alert`` (bool), ``alert_reason`` (str or None),
            ``alert_error_rate``, ``counters`` (every raw field of ``sw:stats``) and
            ``timestamp`` (unix seconds).

        Raises:
            redis.exceptions.ConnectionError: Redis cannot be reached.
        """
        return (await self.snapshot())[0]

    def get_stats_sync(self) -> dict[str, Any]:
        """:meth:`get_stats` with a synchronous client (CLIs, Prometheus scrapes, probes)."""
        return self.snapshot_sync()[0]

    async def snapshot(self) -> tuple[dict[str, Any], dict[str, Histogram]]:
        """:meth:`get_stats` and the full latency histograms by task (asyncio)."""
        redis = self._async_client()
        now = time.time()
        first = await execute_async(redis, self._first_round(now))
        first.update(await asyncio.to_thread(self._cache_stats.read))
        second = await execute_async(redis, self._second_round(first))
        return self._build(first, second, now)

    def snapshot_sync(self) -> tuple[dict[str, Any], dict[str, Histogram]]:
        """:meth:`snapshot` with a synchronous client."""
        redis = self._sync_client()
        now = time.time()
        first = execute_sync(redis, self._first_round(now))
        first.update(self._cache_stats.read())
        second = execute_sync(redis, self._second_round(first))
        return self._build(first, second, now)

    # ------------------------------------------------------------------ the two rounds
    def _first_round(self, now: float) -> dict[str, tuple[Any, ...]]:
        live_since_ms = int((now - self.settings.heartbeat_ttl_s) * 1000)
        k = self.keys
        return {
            "stats": ("HGETALL", k.stats),
            "xlen": ("XLEN", k.jobs),
            "groups": ("XINFO GROUPS", k.jobs),
            "retries": ("ZCARD", k.retries),
            "dlq": ("XLEN", k.dlq),
            "workers": ("ZRANGEBYSCORE", k.workers, live_since_ms, "+inf", "WITHSCORES"),
            "latency_tasks": ("SMEMBERS", k.latency_tasks),
            "window": self._window_command(now),
            "by_model": ("HGETALL", k.stats_models),
            "sweeps": ("HGETALL", k.stats_sweeps),
        }

    def _window_command(self, now: float) -> tuple[Any, ...]:
        """Sum of the buckets of the last ``alert_window_s`` seconds (the current one too)."""
        step, last = counter_names.WINDOW_BUCKET_S, int(now) // counter_names.WINDOW_BUCKET_S
        first = last - max(1, -(-self.settings.alert_window_s // step)) + 1
        buckets = [self.keys.stats_window(b) for b in range(first, last + 1)]
        return ("EVAL", lua_source("metrics_window"), len(buckets), *buckets)

    def _second_round(self, first: Mapping[str, Any]) -> dict[str, tuple[Any, ...]]:
        k = self.keys
        commands: dict[str, tuple[Any, ...]] = {}
        group = find_group(first.get("groups"), k.jobs_group)
        if group is not None and group_lag(group) is None and int(first.get("xlen") or 0) > 0:
            last = as_text(group.get("last-delivered-id", "0-0"))
            commands["undelivered"] = (
                "EVAL",
                lua_source("metrics_queue_length"),
                1,
                k.jobs,
                last,
                QUEUE_COUNT_CAP,
            )
        for member, _score in as_pairs(first.get("workers")):
            commands[f"worker:{as_text(member)}"] = ("HGETALL", k.worker(as_text(member)))
        for task in sorted(as_text(t) for t in ok_or(first.get("latency_tasks"), set())):
            commands[f"latency:{task}"] = ("HGETALL", k.latency(task))
        return commands

    def _build(
        self, first: Mapping[str, Any], second: Mapping[str, Any], now: float
    ) -> tuple[dict[str, Any], dict[str, Histogram]]:
        raw_stats = {as_text(a): as_int(b) for a, b in ok_or(first.get("stats"), {}).items()}
        meta = {as_text(a): as_int(b) for a, b in ok_or(first.get("cache_meta"), {}).items()}
        out: dict[str, Any] = {"timestamp": now}
        for name in COUNTERS:
            out[name] = raw_stats.get(name, 0)
        # The cache counts every lookup in its own meta hash; processes that flush
        # Counters also count into sw:stats. Each is complete for some clients only.
        for name, meta_name in CACHE_META_FIELDS.items():
            out[name] = max(out[name], meta.get(meta_name, 0))
        prefix = counter_names.error_counter("")
        out["errors_by_type"] = {
            name[len(prefix) :]: value
            for name, value in sorted(raw_stats.items())
            if name.startswith(prefix) and value
        }
        requests = out[counter_names.TOTAL_REQUESTS]
        out["error_rate"] = out[counter_names.ERRORS] / requests if requests else 0.0
        window = ok_or(first.get("window"), [0, 0]) or [0, 0]
        out["recent_requests"], out["recent_errors"] = as_int(window[0]), as_int(window[1])
        recent = out["recent_requests"]
        out["recent_error_rate"] = out["recent_errors"] / recent if recent else 0.0
        out["alert_window_s"] = self.settings.alert_window_s
        by_model: dict[str, dict[str, int]] = {}
        for field, value in ok_or(first.get("by_model"), {}).items():
            status, _, model = as_text(field).partition(":")
            by_model.setdefault(model, {})[status] = as_int(value)
        out["jobs_by_model"] = dict(sorted(by_model.items()))
        out.update(sweep_stats(ok_or(first.get("sweeps"), {})))
        lookups = out[counter_names.CACHE_HITS] + out[counter_names.CACHE_MISSES]
        out["cache_hit_rate"] = out[counter_names.CACHE_HITS] / lookups if lookups else 0.0
        out["cache_bytes"] = meta.get("bytes", 0)
        out["cache_refusals"] = meta.get("refusals", 0)
        out["cache_chunks"] = as_int(ok_or(first.get("cache_chunks"), 0))
        out["cache_budget_bytes"] = self.settings.cache_size_bytes

        out.update(self._queue(first, second))
        out["scheduled_retries"] = as_int(ok_or(first.get("retries"), 0))
        out["dead_letters"] = as_int(ok_or(first.get("dlq"), 0))

        workers = self._workers(first, second, now)
        out["workers"] = workers
        out["live_workers"] = len(workers)
        by_kind: dict[str, int] = {}
        for worker in workers:
            by_kind[worker["kind"]] = by_kind.get(worker["kind"], 0) + 1
        out["workers_by_kind"] = by_kind

        histograms = {
            name[len("latency:") :]: Histogram.from_hash(ok_or(value, {}))
            for name, value in second.items()
            if name.startswith("latency:")
        }
        out["latency"] = {task: hist.summary() for task, hist in histograms.items()}
        out["throughput_jobs_s"] = self._throughput(now, out[counter_names.COMPLETED])
        out.update(self._alert(out))
        out["counters"] = raw_stats
        return out, histograms

    def _queue(self, first: Mapping[str, Any], second: Mapping[str, Any]) -> dict[str, int]:
        xlen = as_int(ok_or(first.get("xlen"), 0))
        group = find_group(first.get("groups"), self.keys.jobs_group)
        if group is None:
            # No worker has created the group yet: every entry waits.
            return {"queue_length": xlen, "pending": 0, "consumers": 0}
        lag = group_lag(group)
        if lag is None:
            lag = as_int(ok_or(second.get("undelivered"), 0)) if xlen else 0
        return {
            "queue_length": lag,
            "pending": as_int(group.get("pending", 0)),
            "consumers": as_int(group.get("consumers", 0)),
        }

    def _workers(
        self, first: Mapping[str, Any], second: Mapping[str, Any], now: float
    ) -> list[dict[str, Any]]:
        workers: list[dict[str, Any]] = []
        for member, score in as_pairs(first.get("workers")):
            worker_id = as_text(member)
            raw = ok_or(second.get(f"worker:{worker_id}"), {}).items()
            fields = {as_text(a): as_num(as_text(b)) for a, b in raw}  # numbers stay numbers
            if not fields:
                continue  # its hash expired: the worker stopped beating
            beat_ms = as_int(fields.get("beat_ms", score))
            current = next((fields[f] for f in CURRENT_FIELDS if fields.get(f)), "")
            workers.append(
                {
                    **fields,
                    "id": worker_id,
                    "kind": fields.get("kind", "?"),
                    "current": current,
                    "beat_ms": beat_ms,
                    "age_s": max(0.0, now - beat_ms / 1000),
                }
            )
        workers.sort(key=lambda w: (w["kind"], w["id"]))
        return workers

    def _throughput(self, now: float, completed: int) -> float | None:
        previous, self._previous = self._previous, (now, completed)
        if previous is None or now <= previous[0]:
            return None
        return max(0, completed - previous[1]) / (now - previous[0])

    def _alert(self, out: Mapping[str, Any]) -> dict[str, Any]:
        threshold = self.settings.alert_error_rate
        rate = out["recent_error_rate"]
        alert = bool(out["recent_requests"]) and rate > threshold
        reason = None
        if alert:
            reason = (
                f"error rate {rate:.1%} over {self.settings.alert_window_s} s ("
                f"{out['recent_errors']} errors / {out['recent_requests']} requests) > "
                f"{threshold:.1%} (SW_ALERT_ERROR_RATE)"
            )
        return {"alert": alert, "alert_reason": reason, "alert_error_rate": threshold}


# ---------------------------------------------------------------------------- helpers

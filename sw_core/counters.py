"""Counters: counted in-process, flushed atomically to the Redis hash ``sw:stats``.

Components (storage, cache, engine) call :meth:`Counters.incr`; it is cheap and thread-safe.
Whoever owns a Redis connection (a worker, a producer) calls :meth:`Counters.flush`, which
adds the deltas with one ``HINCRBY`` pipeline (a transaction), so counts from many
processes add up exactly. Counter names are the constants below.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis.asyncio as aioredis

#: Jobs submitted (producers count them).
TOTAL_REQUESTS = "total_requests"
#: Jobs that ended with a result.
COMPLETED = "completed"
#: Jobs that ended in the dead-letter stream.
DEAD_LETTERED = "dead_lettered"
#: Jobs cancelled, jobs past their deadline (never errors), submits refused (queue full).
CANCELLED = "cancelled"
EXPIRED = "expired"
QUEUE_FULL = "queue_full"
#: Job attempts that failed and were scheduled again.
RETRIED = "retried"
#: Failed job attempts, transient or not.
FAILED = "failed"
#: Every error, whatever its type; ``errors:<Type>`` splits it by type.
ERRORS = "errors"
#: Chunk cache.
CACHE_HITS = "cache_hits"
CACHE_MISSES = "cache_misses"
CACHE_EVICTIONS = "cache_evictions"
CACHE_CORRUPTIONS = "cache_corruptions"
#: Storage.
STORAGE_BYTES_READ = "storage_bytes_read"
STORAGE_RETRIES = "storage_retries"
STORAGE_FAILOVERS = "storage_failovers"
INTEGRITY_FAILURES = "integrity_failures"

#: Per-model sweep counters (hash ``Keys.stats_sweeps``, fields ``<name>:<model>``): model
#: calls (one pass over the weights) that read chunks from outside the worker's memory, the
#: chunks and bytes those passes read, and how many of them the shared cache served.
SWEEPS = "sweeps"
SWEEP_READS = "reads"
SWEEP_HITS = "hits"
SWEEP_BYTES = "bytes"
SWEEP_HIT_BYTES = "hit_bytes"
SWEEP_COUNTERS = (SWEEPS, SWEEP_READS, SWEEP_HITS, SWEEP_BYTES, SWEEP_HIT_BYTES)

#: Width of one bucket of the recent counts (``Keys.stats_window``), in seconds.
WINDOW_BUCKET_S = 10
#: How long a bucket is kept: the longest ``alert_window_s`` plus one bucket.
WINDOW_TTL_S = 86_400 + 60


def sweep_counter(name: str, model: str) -> str:
    """Field of one model's sweep counter in ``Keys.stats_sweeps``, e.g. ``hits:smollm2``."""
    return f"{name}:{model}"


def error_counter(error_type: str) -> str:
    """Counter name of one error type, e.g. ``errors:StorageError``."""
    return f"{ERRORS}:{error_type}"


class Counters:
    """Thread-safe in-process counters with a pending delta for Redis."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: Counter[str] = Counter()
        self._pending: Counter[str] = Counter()

    def incr(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to counter ``name``."""
        if not amount:
            return
        with self._lock:
            self._totals[name] += amount
            self._pending[name] += amount

    def count_error(self, exc: BaseException) -> None:
        """Count one error in ``errors`` and in ``errors:<Type>``."""
        self.incr(ERRORS)
        self.incr(error_counter(type(exc).__name__))

    def get(self, name: str) -> int:
        with self._lock:
            return self._totals[name]

    def snapshot(self) -> dict[str, int]:
        """Totals counted by this process since it started."""
        with self._lock:
            return dict(self._totals)

    def take_pending(self) -> dict[str, int]:
        """Deltas not yet flushed; the caller owns them from now on."""
        with self._lock:
            pending, self._pending = dict(self._pending), Counter()
            return pending

    def restore_pending(self, deltas: dict[str, int]) -> None:
        """Put deltas back after a failed flush, so none is lost."""
        with self._lock:
            self._pending.update(deltas)

    async def flush(self, redis: aioredis.Redis, stats_key: str) -> None:
        """Add the pending deltas to the Redis hash ``stats_key`` in one transaction."""
        deltas = self.take_pending()
        if not deltas:
            return
        try:
            async with redis.pipeline(transaction=True) as pipe:
                for name, amount in deltas.items():
                    pipe.hincrby(stats_key, name, amount)
                if deltas.get(ERRORS):  # recent errors feed the windowed alert too
                    bucket = f"{stats_key}:w:{int(time.time()) // WINDOW_BUCKET_S}"
                    pipe.hincrby(bucket, ERRORS, deltas[ERRORS])
                    pipe.expire(bucket, WINDOW_TTL_S)
                await pipe.execute()
        except BaseException:
            self.restore_pending(deltas)
            raise

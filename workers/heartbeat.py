"""Worker heartbeats: a hash per worker with a TTL, and a sorted set of last beats.

``Keys.worker(id)`` holds ``kind`` (inference | loader), ``host``, ``pid``, ``started_ms``,
``beat_ms`` and whatever the worker reports (current job and model, jobs done); it expires
``heartbeat_ttl_s`` after the last beat, so a dead worker's hash disappears on its own.
``Keys.workers`` scores each worker id by its last beat (ms), for ops tooling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable

from redis.asyncio import Redis

from sw_core.counters import Counters
from sw_core.keys import Keys
from sw_core.pipeline.jobs import now_ms
from sw_core.settings import Settings

log = logging.getLogger(__name__)


def default_worker_name() -> str:
    """``<hostname>-<pid>``."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Heartbeat:
    """Beats every ``heartbeat_interval_s`` until stopped; also flushes ``counters``.

    Args:
        report: returns the fields that change (current job, jobs done ...).
        counters: in-process counters to add to ``sw:stats`` on each beat.
    """

    def __init__(
        self,
        redis: Redis,
        settings: Settings,
        *,
        worker_id: str,
        kind: str,
        report: Callable[[], dict[str, str | int]] | None = None,
        counters: Counters | None = None,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.worker_id = worker_id
        self.kind = kind
        self.report = report
        self.counters = counters
        self.started_ms = now_ms()
        self._task: asyncio.Task[None] | None = None

    async def beat(self) -> None:
        """One heartbeat (and counter flush) now."""
        now = now_ms()
        fields: dict[str, str | int] = {
            "kind": self.kind,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_ms": self.started_ms,
            "beat_ms": now,
        }
        if self.report is not None:
            fields.update(self.report())
        key = self.keys.worker(self.worker_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.pexpire(key, max(1, int(self.settings.heartbeat_ttl_s * 1000)))
            pipe.zadd(self.keys.workers, {self.worker_id: now})
            await pipe.execute()
        if self.counters is not None:
            await self.counters.flush(self.redis, self.keys.stats)

    async def start(self) -> None:
        await self.beat()
        self._task = asyncio.create_task(self._run(), name=f"heartbeat-{self.worker_id}")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_s)
            try:
                await self.beat()
            except Exception as exc:  # a Redis blip must not stop the beats for good
                log.warning("heartbeat of %s failed: %s", self.worker_id, exc)

    async def stop(self) -> None:
        """Stop beating and remove this worker's entries."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            if self.counters is not None:
                await self.counters.flush(self.redis, self.keys.stats)
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(self.keys.worker(self.worker_id))
                pipe.zrem(self.keys.workers, self.worker_id)
                await pipe.execute()

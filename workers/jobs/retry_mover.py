"""The retry mover: puts due retries back on the jobs stream.

Every inference worker runs one. A failed attempt waits in the sorted set ``sw:retries``
(scored by its due time on the Redis clock) with its fields in a hash; the mover re-adds
each due job to ``sw:jobs`` atomically (Lua), so a retry is never lost nor doubled, whichever
worker scheduled it and whether or not that worker still lives. It sleeps until the next
retry is due (at most :data:`MAX_SLEEP_S`), or until :meth:`RetryMover.wake` is called.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sw_core.pipeline.store import JobStore

log = logging.getLogger(__name__)

#: Most retries moved per Lua call.
MOVE_LIMIT = 100
#: Longest pause when no retry is due sooner (a retry another worker scheduled is seen
#: at most this late).
MAX_SLEEP_S = 0.25


class RetryMover:
    """Background task moving due retries for one worker."""

    def __init__(self, store: JobStore, worker: str) -> None:
        self.store = store
        self.worker = worker
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self.worker}-retries")

    def wake(self) -> None:
        """Look again now (a retry was just scheduled)."""
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                moved, next_in_s = await self.store.move_due_retries(MOVE_LIMIT)
            except Exception as exc:
                log.warning("worker %s: moving due retries failed: %s", self.worker, exc)
                await asyncio.sleep(1.0)
                continue
            if moved >= MOVE_LIMIT:
                continue
            pause_s = MAX_SLEEP_S
            if next_in_s is not None:
                pause_s = min(pause_s, max(next_in_s, 0.002))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), pause_s)

"""The compute thread: the one way work runs on an engine's model.

Every model call -- a batch, a warm-up, a continuous-batching step -- runs through
:class:`ComputeThread`: on the engine's single ``sw-compute`` thread, holding the engine's
lock, inside ``torch.inference_mode``, with the residency begun on the caller's fetch loop
before and settled after. If the work raises, the engine's memory is cleared (and the
caller's own ``on_error`` runs) before the error propagates. An awaiting caller that is
cancelled cancels the work if it has not started, else makes the residency's waiting
fetch raise so the run unwinds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

import torch

from sw_core.engine.io.loop import LoopThread

T = TypeVar("T")
#: Schedules a fetch coroutine on the loop whose clients the chunk source uses.
Submit = Callable[[Coroutine[Any, Any, Any]], "concurrent.futures.Future[Any]"]


class Residency(Protocol):
    """The parts of :class:`~sw_core.engine.memory.residency.Residency` a run drives."""

    def begin(self, submit: Submit) -> None: ...

    def settle(self) -> None: ...

    def cancel(self) -> None: ...

    def close(self) -> None: ...


#: Rows of a batch (with packed weights: token rows of a model call, a prompt's included)
#: from which its ops are large enough for every core while chunks stream (packed SmolLM2
#: on 2 cores: a decode step of 1 row 8-25 % faster on one thread, of 16 rows 18 % faster
#: on two; a 38-token prompt 12 % faster on two).
WIDE_PASS_ROWS = 8


def intra_op_threads(configured: int, cores: int, *, streaming: bool, rows: int = 1) -> int:
    """torch's intra-op threads for a model call of ``rows`` token rows: ``configured`` when
    set (> 0); else ``cores`` for a resident model or a wide call, and one fewer (at least 1)
    while chunks stream for a call of fewer than :data:`WIDE_PASS_ROWS` rows, so the chunk
    reads and hashes have a core of their own: on 2 cores, an OpenMP team of 2 next to a busy
    fetch waited for its descheduled member at every small op (3x the time per token)."""
    if configured > 0:
        return configured
    if streaming and rows < WIDE_PASS_ROWS:
        return max(1, cores - 1)
    return max(1, cores)


def use_threads(wanted: int) -> None:
    """Set the calling thread's intra-op threads (its OpenMP team) when they differ."""
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)


class ComputeThread:
    """One engine's compute thread and lock.

    Args:
        residency: begun before and settled after each run; cancelled when an awaiting
            caller is cancelled mid-run.
        clear: releases every materialized chunk; called (holding the lock) when a run fails.
    """

    def __init__(
        self,
        residency: Callable[[], Residency],
        clear: Callable[[], None],
        threads: Callable[[], int] | None = None,
    ) -> None:
        self._residency = residency
        self._clear = clear
        self._threads = threads
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sw-compute")
        self._lock = threading.Lock()
        self._loop_thread = LoopThread()

    async def run(self, fn: Callable[[], T], *, on_error: Callable[[], None] | None = None) -> T:
        """Run ``fn`` on the compute thread; its fetches run on the current event loop."""
        loop = asyncio.get_running_loop()

        def submit(coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
            return asyncio.run_coroutine_threadsafe(coro, loop)

        future = self._pool.submit(self._locked, fn, submit, on_error)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if not future.cancel():
                self._residency().cancel()
            raise

    def run_sync(self, fn: Callable[[], T]) -> T:
        """:meth:`run` for a caller that is not on an event loop (fetches run on the private
        loop thread); blocks until ``fn`` returns."""
        return self._pool.submit(self._locked, fn, self._loop_thread.submit, None).result()

    def _locked(
        self, fn: Callable[[], T], submit: Submit, on_error: Callable[[], None] | None
    ) -> T:
        with self._lock:
            if self._threads is not None:
                use_threads(self._threads())
            residency = self._residency()
            residency.begin(submit)
            try:
                with torch.inference_mode():
                    result = fn()
            except BaseException:
                self._clear()
                if on_error is not None:
                    on_error()
                raise
            residency.settle()
        return result

    def clear_soon(self) -> None:
        """Clear now if nothing runs, else right after the running work (never blocks)."""
        if self._lock.acquire(blocking=False):
            try:
                self._clear()
            finally:
                self._lock.release()
        else:
            self._pool.submit(self.clear_soon)

    def close(self, *, clear: bool) -> None:
        """Wait for queued work, clear (when ``clear``: the engine is loaded) and stop the
        threads, the residency's loader threads included."""
        self._pool.shutdown(wait=True)
        if clear:
            with self._lock:
                self._clear()
            self._residency().close()
        self._loop_thread.close()

"""Materialized chunks: a byte-counted set under the memory budget, with prefetch.

The compute thread calls :meth:`Residency.acquire` just before a module runs and
:meth:`Residency.release` right after. A chunk's bytes are reserved against the budget
*before* its fetch starts and given back when it is dropped, so
``materialized_bytes <= budget_bytes`` holds at every moment, in flight included
(:attr:`Residency.peak_bytes` records the highest value). Chunks in the plan's ``keep``
set stay after release; others are dropped as soon as their last user releases them.

Prefetch follows a *schedule*: the chunk names the current pass will acquire, in order.
Each acquire moves a cursor along it and starts loading the next ``prefetch_count``
chunks that are neither resident nor in flight -- as long as the budget has room; a
prefetch never evicts anything. Loads run as coroutines on an event loop (the ``submit``
callable), or on the loader's own threads where it offers ``start(chunk)`` (a future, or
None for the event loop), so fetching overlaps the compute thread's work.
"""

from __future__ import annotations

import concurrent.futures
import functools
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from sw_core.chunks.manifest import ChunkInfo
from sw_core.engine.memory.arrival import await_load, checked
from sw_core.engine.memory.slots import (
    Cancelled,
    Loaded,
    ResidencyStats,
    Slot,
    Submit,
    Tensors,
    Unverified,
)
from sw_core.exceptions import ModelError
from sw_core.utils import mib

Loader = Callable[[ChunkInfo], Coroutine[Any, Any, Tensors]]
BindFn = Callable[[ChunkInfo, Tensors], None]
UnbindFn = Callable[[ChunkInfo], None]
StartFn = Callable[[ChunkInfo, Submit], "concurrent.futures.Future[Loaded] | None"]


class Residency:
    """Chunks materialized in this process, under a byte budget.

    Args:
        model_name: for messages.
        budget_bytes: cap on materialized bytes (reserved, in flight and resident).
        keep: chunk names kept after release.
        prefetch_count: how many chunks to load ahead of the one acquired.
        loader: coroutine factory returning a chunk's tensors (fetch + deserialize); its
            optional ``start(chunk)`` loads a chunk off the event loop (a future, or None).
        bind / unbind: put a chunk's tensors into the model / take them out.
        timeout_s: longest wait for one chunk.
        expand: a chunk materialized (widened) holds its stored bytes times this.
        sizes: the bytes each chunk holds once materialized, when known per chunk (packed
            chunk sets); replaces ``expand``.
    """

    def __init__(
        self,
        *,
        model_name: str,
        budget_bytes: int,
        keep: Iterable[str],
        prefetch_count: int,
        loader: Loader,
        bind: BindFn,
        unbind: UnbindFn,
        timeout_s: float,
        expand: float = 1.0,
        sizes: Mapping[str, int] | None = None,
    ) -> None:
        self.model_name = model_name
        self.expand = expand
        self.sizes = dict(sizes) if sizes is not None else None
        self.budget_bytes = budget_bytes
        self.keep = frozenset(keep)
        self.prefetch_count = max(0, prefetch_count)
        self.timeout_s = timeout_s
        self._loader = loader
        self._start_off_loop: StartFn | None = getattr(loader, "start", None)
        self._bind = bind
        self._unbind = unbind
        self._lock = threading.RLock()
        self._slots: dict[str, Slot] = {}
        self._extra: dict[str, int] = {}  # other reservations (merged tensors)
        self._materialized = 0
        self._peak = 0
        self._submit: Submit | None = None
        self._schedule: list[ChunkInfo] = []
        self._cursor = -1
        self._cancel = threading.Event()
        self.stats = ResidencyStats()

    # ---------------------------------------------------------------- accounting
    def size_of(self, chunk: ChunkInfo) -> int:
        """Bytes ``chunk`` holds once materialized (what its load reserves)."""
        if self.sizes is not None and chunk.name in self.sizes:
            return self.sizes[chunk.name]
        return int(chunk.size_bytes * self.expand)

    @property
    def materialized_bytes(self) -> int:
        """Bytes reserved right now: resident, in use, in flight and merged tensors."""
        return self._materialized

    @property
    def peak_bytes(self) -> int:
        """Highest :attr:`materialized_bytes` since construction or :meth:`reset_peak`."""
        return self._peak

    def reset_peak(self) -> None:
        with self._lock:
            self._peak = self._materialized

    def reset_stats(self) -> None:
        with self._lock:
            self.stats = ResidencyStats()

    def resident_chunks(self) -> list[str]:
        """Names of chunks whose tensors are in memory now (loaded, not in flight)."""
        with self._lock:
            return [n for n, s in self._slots.items() if s.tensors is not None]

    def is_resident(self, name: str) -> bool:
        slot = self._slots.get(name)
        return slot is not None and slot.tensors is not None

    def _try_reserve(self, n_bytes: int) -> bool:
        if self._materialized + n_bytes > self.budget_bytes:
            return False
        self._materialized += n_bytes
        self._peak = max(self._peak, self._materialized)
        return True

    def reserve(self, key: str, n_bytes: int, *, what: str) -> None:
        """Reserve bytes for something that is not a chunk (a merged tensor), evicting
        unused streamed chunks when needed; ModelError when it cannot fit."""
        with self._lock:
            if not self._try_reserve(n_bytes):
                self._evict_unused(n_bytes)
                if not self._try_reserve(n_bytes):
                    raise self._over_budget(what, n_bytes)
            self._extra[key] = self._extra.get(key, 0) + n_bytes

    def unreserve(self, key: str) -> None:
        with self._lock:
            self._materialized -= self._extra.pop(key, 0)

    # ---------------------------------------------------------------- run scoping
    def begin(self, submit: Submit, schedule: list[ChunkInfo] | None = None) -> None:
        """Start a pass: loads go through ``submit``; prefetch follows ``schedule``."""
        with self._lock:
            self._submit = submit
            self._cancel.clear()
        self.set_schedule(schedule or [])

    def set_schedule(self, schedule: list[ChunkInfo]) -> None:
        """The chunks the next pass will acquire, in order; prefetch the first ones now."""
        with self._lock:
            self._schedule = list(schedule)
            self._cursor = -1
            self._pump()

    def schedule_next(self, chunks: list[ChunkInfo]) -> None:
        """Insert ``chunks`` right after the current position of the schedule (the experts
        a router just chose) and start prefetching them."""
        with self._lock:
            at = self._cursor + 1
            self._schedule[at:at] = chunks
            self._pump()

    def cancel(self) -> None:
        """Make a waiting :meth:`acquire` raise; the run unwinds and releases its chunks."""
        self._cancel.set()

    def settle(self) -> None:
        """End of a run: wait for loads in flight; keep finished loads of kept chunks, drop
        every other chunk nobody uses."""
        with self._lock:
            pending = [s for s in self._slots.values() if s.future is not None]
            self._schedule = []  # loads finishing now must not start new ones
            self._cursor = -1
        for slot in pending:
            try:
                assert slot.future is not None
                tensors = slot.future.result(timeout=self.timeout_s)
            except BaseException:  # its error belongs to nobody now; the slot is dropped
                continue
            if isinstance(tensors, Unverified):
                continue  # only streamed chunks come unchecked: nothing to keep
            with self._lock:
                if slot.chunk.name in self.keep and self._slots.get(slot.chunk.name) is slot:
                    slot.tensors, slot.future = tensors, None
        with self._lock:
            for name in [n for n, s in self._slots.items() if s.users == 0]:
                slot = self._slots[name]
                if name not in self.keep or slot.tensors is None:
                    if slot.prefetched and not slot.used:
                        self.stats.wasted += 1
                    self._drop(name)

    def close(self) -> None:
        """Stop the loader's threads, if it has any (after :meth:`clear`)."""
        close = getattr(self._loader, "close", None)
        if close is not None:
            close()

    def clear(self) -> None:
        """Drop everything (resident chunks too) and forget merged reservations."""
        self.settle()
        with self._lock:
            for name in list(self._slots):
                self._drop(name)
            for key in list(self._extra):
                self.unreserve(key)
            self._submit = None

    # ---------------------------------------------------------------- acquire / release
    def acquire(self, chunk: ChunkInfo) -> Tensors:
        """The chunk's tensors, bound into the model; blocks until they are loaded.

        Raises :class:`Cancelled` once :meth:`cancel` was called, resident chunk or not: a
        cancelled run stops at its next module instead of computing on to the end.
        """
        if self._cancel.is_set():
            raise Cancelled(f"model {self.model_name!r}: run cancelled")
        with self._lock:
            slot = self._slots.get(chunk.name)
            if slot is None:
                slot = self._start(chunk, must=True)
                assert slot is not None  # must=True raises instead
                self.stats.misses += 1
            elif slot.used and slot.tensors is not None:
                self.stats.hits += 1
            else:
                self.stats.misses += 1
                self.stats.prefetched += int(slot.prefetched and not slot.used)
            slot.users += 1
            slot.used = True
            self._advance(chunk.name)
            self._pump()
        try:
            tensors = self._wait(slot)
        except BaseException:
            with self._lock:
                slot.users -= 1
                if self._slots.get(chunk.name) is slot:
                    self._drop(chunk.name)
            raise
        with self._lock:
            if not slot.bound:
                self._bind(chunk, tensors)
                slot.bound = True
        return tensors

    def release(self, chunk: ChunkInfo) -> None:
        """Done with ``chunk`` for now: dropped at once unless it is kept."""
        with self._lock:
            slot = self._slots.get(chunk.name)
            if slot is None:
                return
            slot.users = max(0, slot.users - 1)
            if slot.users == 0 and chunk.name not in self.keep:
                self._drop(chunk.name)
            self._pump()

    # ---------------------------------------------------------------- internals
    def _start(self, chunk: ChunkInfo, *, must: bool) -> Slot | None:
        size = self.size_of(chunk)
        if not self._try_reserve(size):
            if not must:
                return None
            self._evict_unused(size)
            if not self._try_reserve(size):
                raise self._over_budget(f"chunk {chunk.name!r}", size)
        if self._submit is None:
            self._materialized -= size
            raise ModelError(f"model {self.model_name!r}: no run is active to load chunks")
        slot = Slot(chunk=chunk, reserved_bytes=size, prefetched=not must)
        self._slots[chunk.name] = slot
        started = time.perf_counter()
        off_loop = self._start_off_loop
        future = off_loop(chunk, self._submit) if off_loop is not None else None
        if future is None:
            future = self._submit(self._loader(chunk))
        slot.future = future

        def done(fut: concurrent.futures.Future[Loaded]) -> None:
            with self._lock:
                if fut.cancelled() or fut.exception() is not None:
                    return
                self.stats.loads += 1
                self.stats.loaded_bytes += size
                self.stats.load_s += time.perf_counter() - started
                current = self._slots.get(chunk.name)
                if chunk.name in self.keep and current is not None and current.future is fut:
                    self._pump()  # a kept chunk loaded ahead frees a loading slot

        future.add_done_callback(done)
        return slot

    def _wait(self, slot: Slot) -> Tensors:
        if slot.tensors is not None:
            return slot.tensors
        assert slot.future is not None
        started = time.perf_counter()
        try:
            loaded = await_load(
                slot.future,
                slot.chunk,
                model_name=self.model_name,
                timeout_s=self.timeout_s,
                cancel=self._cancel,
            )
        finally:
            with self._lock:
                self.stats.wait_s += time.perf_counter() - started
        load_verified = getattr(self._loader, "load_verified", None)
        reload = load_verified and functools.partial(load_verified, submit=self._submit)
        tensors, refetched = checked(loaded, slot.chunk, model_name=self.model_name, reload=reload)
        with self._lock:
            self.stats.refetched += refetched
            slot.tensors = tensors
            slot.future = None
        return tensors

    def _advance(self, name: str) -> None:
        for index in range(self._cursor + 1, len(self._schedule)):
            if self._schedule[index].name == name:
                self._cursor = index
                return

    def _pump(self) -> None:
        """Start loads along the schedule: at most ``prefetch_count`` chunks ahead that are
        loading, or loaded but streamed (they hold window room). Kept chunks already loaded
        cost neither I/O nor window, so the pump looks past them: a model that stays
        resident keeps loading back to back, not at the pace of compute."""
        if self._submit is None or self.prefetch_count == 0 or self._cancel.is_set():
            return
        ahead = 0
        for chunk in self._schedule[self._cursor + 1 :]:
            if ahead >= self.prefetch_count:
                return
            slot = self._slots.get(chunk.name)
            if slot is not None:
                loading = slot.future is not None and not slot.future.done()
                if chunk.name in self.keep and not loading:
                    continue
                ahead += 1
                continue
            ahead += 1
            if self._start(chunk, must=False) is None:
                return  # no room in the budget: stop, never evict for a prefetch

    def _evict_unused(self, n_bytes: int) -> None:
        """Drop loaded chunks nobody uses that are not kept, until ``n_bytes`` fit; then, if
        still short, cancel prefetches still in flight that nobody waits for (a chunk needed
        now, such as an expert a router just chose, goes before one needed later)."""
        for in_flight in (False, True):
            for name in list(self._slots):
                if self._materialized + n_bytes <= self.budget_bytes:
                    return
                slot = self._slots[name]
                idle = slot.future is None or slot.future.done()
                if slot.users == 0 and name not in self.keep and (idle or in_flight):
                    if slot.prefetched and not slot.used:
                        self.stats.wasted += 1
                    self._drop(name)

    def _drop(self, name: str) -> None:
        slot = self._slots.pop(name)
        if slot.future is not None:
            slot.future.cancel()
        if slot.bound:
            self._unbind(slot.chunk)
        slot.tensors = None
        self._materialized -= slot.reserved_bytes

    def _over_budget(self, what: str, n_bytes: int) -> ModelError:
        in_use = [n for n, s in self._slots.items() if s.users > 0]
        return ModelError(
            f"model {self.model_name!r}: {what} needs {mib(n_bytes):.1f} MiB but only "
            f"{mib(self.budget_bytes - self._materialized):.1f} MiB of the "
            f"{mib(self.budget_bytes):.1f} MiB memory budget is free "
            f"(in use: {', '.join(in_use) or 'nothing'}); raise SW_MEMORY_BUDGET_MB"
        )

"""Turning a chunk into tensors: fetch (into a reused buffer for streamed chunks), check the
size, deserialize zero-copy, widen to the compute dtype."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future

import torch

from sw_core.chunks.manifest import ChunkInfo, Manifest
from sw_core.engine.io.rebase import Template
from sw_core.engine.io.sources import (
    ChunkSource,
    FinishOnLoop,
    blocking_fetch,
    unchecked_fetch,
)
from sw_core.engine.memory.budget import ResidencyPlan
from sw_core.engine.memory.buffers import GRANULE_BYTES, BufferPool, Lease
from sw_core.engine.memory.slots import Loaded, Submit, Unverified
from sw_core.engine.model.dtypes import Packing, Tensors, make_packed, to_compute, widen_plain
from sw_core.engine.model.skeleton import Skeleton
from sw_core.exceptions import SecurityError
from sw_core.storage.direct import address


def pool_bytes(
    manifest: Manifest,
    plan: ResidencyPlan,
    expand: float,
    prefetch_count: int,
    sizes: dict[str, int] | None = None,
) -> int:
    """What the buffer pool may hold: the plan's window for streamed chunks (the only ones
    read into pooled buffers; it counts the chunk just released, whose buffer is still
    referenced for a moment), the stored copy of one chunk being widened, and the rounding
    of each buffer to its size class. Kept chunks, which fill the rest of the budget, have
    memory of their own, so chunk memory stays within the budget plus that slack."""
    streamed = [c for c in manifest.chunks if c.name not in plan.keep]
    if not streamed:
        return 0
    rounding = GRANULE_BYTES * (prefetch_count + 3)
    if sizes is not None:
        # packed tensors kept packed are used in place in their buffer (the window counts
        # them); a chunk widened on arrival holds its stored buffer besides the window
        widened = [c.size_bytes for c in streamed if sizes.get(c.name, 0) > c.size_bytes]
        return plan.window_bytes + max(widened, default=0) + rounding
    largest = max(c.size_bytes for c in streamed)
    narrow_copy = largest if expand > 1 else 0
    return plan.window_bytes + narrow_copy + rounding


def _takes_out(source: ChunkSource) -> bool:
    """Whether ``source.fetch`` takes ``out=`` (a subclass may override it without)."""
    try:
        return "out" in inspect.signature(source.fetch).parameters
    except (TypeError, ValueError):
        return False


class ChunkMaterializer:
    """The residency's loader: ``await loader(chunk)`` gives the chunk's tensors.

    On a CPU, streamed chunks of a source with a blocking read
    (:func:`~sw_core.engine.io.sources.blocking_fetch`) load on the materializer's own
    ``loader_threads`` instead (:meth:`start`): read, verify, deserialize and widen in one
    call, with no event-loop hop in between; a chunk whose tensors are all views of its
    buffer is built once per buffer it lands in, and laid over each later lease of that
    buffer by views (:mod:`sw_core.engine.io.rebase`). Such a chunk read from a source that
    can leave its digest check to the caller (:func:`~sw_core.engine.io.sources.unchecked_fetch`)
    is handed over :class:`~sw_core.engine.memory.slots.Unverified`: the residency runs the
    check on the compute thread before the chunk's first use, where a core is idle while
    the loader's reads are the bottleneck, and a chunk that fails it is read again through
    :meth:`load_verified`. The bytes of a chunk built afresh are always verified first.

    Args:
        source: the :class:`~sw_core.engine.io.sources.ChunkSource`.
        skeleton: deserializes and checks a chunk's tensors.
        device: where the tensors go.
        buffers: the pool streamed chunks are read into (kept chunks get their own memory).
        keep: names of the chunks the plan keeps resident.
        dtype: the compute dtype (None: as stored).
        packing: which packed tensors stay packed (None: all are widened).
        loader_threads: threads for blocking loads (``SW_LOADER_THREADS``).
    """

    def __init__(
        self,
        source: ChunkSource,
        skeleton: Skeleton,
        device: torch.device,
        buffers: BufferPool,
        keep: frozenset[str],
        dtype: torch.dtype | None,
        packing: Packing | None = None,
        loader_threads: int = 1,
    ) -> None:
        self.source = source
        self.skeleton = skeleton
        self.device = device
        self.buffers = buffers
        self.keep = keep
        self.dtype = dtype
        self.packing = packing
        self._reads_into = _takes_out(source)
        reader = blocking_fetch(source) if device.type == "cpu" and self._reads_into else None
        self._read_blocking = reader
        self._read_unchecked = unchecked_fetch(source) if reader is not None else None
        self._threads = (
            concurrent.futures.ThreadPoolExecutor(max(1, loader_threads), "sw-load")
            if reader is not None
            else None
        )
        self._pending: set[Future[Loaded]] = set()
        self._pending_lock = threading.Lock()

    async def __call__(self, chunk: ChunkInfo) -> Tensors:
        streamed = chunk.name not in self.keep
        if streamed and self._reads_into:
            fetch_into: Callable[..., Awaitable[bytearray | memoryview]] = self.source.fetch
            data = await fetch_into(chunk, out=self.buffers.take(chunk.size_bytes))
        else:
            data = await self.source.fetch(chunk)
        if self.device.type == "cpu":
            # zero-copy, tens of microseconds: cheaper than a hop to a worker thread and back;
            # widening a streamed chunk (a few ms) runs here too, off the compute thread
            return self._materialize(chunk, data, streamed)
        _check_size(chunk, data)
        tensors = await asyncio.to_thread(self.skeleton.deserialize, chunk, data)
        return await asyncio.to_thread(to_compute, tensors, self.dtype, None, self.packing)

    def start(self, chunk: ChunkInfo, submit: Submit) -> Future[Loaded] | None:
        """Load a streamed ``chunk`` on a loader thread; None when it must go through the
        event loop (kept chunks, sources without a blocking read, other devices). A read the
        source hands back (:class:`~sw_core.engine.io.sources.FinishOnLoop`) is finished by
        a coroutine given to ``submit`` (the run's event loop)."""
        if self._threads is None or chunk.name in self.keep:
            return None
        loaded: Future[Loaded] = Future()
        with self._pending_lock:
            self._pending.add(loaded)
        loaded.add_done_callback(self._forget)
        self._threads.submit(self._start_here, chunk, loaded, submit)
        return loaded

    def close(self) -> None:
        """Stop the loader threads (loads not started yet are cancelled)."""
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        with self._pending_lock:
            pending = list(self._pending)
        for loaded in pending:
            loaded.cancel()

    def _forget(self, loaded: Future[Loaded]) -> None:
        with self._pending_lock:
            self._pending.discard(loaded)

    def _start_here(self, chunk: ChunkInfo, loaded: Future[Loaded], submit: Submit) -> None:
        if not loaded.set_running_or_notify_cancel():
            return  # cancelled before a loader thread took it
        try:
            result = self._load_blocking(chunk)
        except FinishOnLoop as rest:
            try:
                _chain(submit(self._finish(chunk, rest)), loaded)
            except BaseException as exc:  # the loop is gone
                loaded.set_exception(exc)
            return
        except BaseException as exc:
            loaded.set_exception(exc)
            return
        loaded.set_result(result)

    async def _finish(self, chunk: ChunkInfo, rest: FinishOnLoop) -> Tensors:
        data = await rest.finish()
        return self._materialize(chunk, data, streamed=True)

    def load_verified(self, chunk: ChunkInfo, submit: Submit | None = None) -> Tensors:
        """A streamed chunk's tensors, its bytes verified as they are read (blocking): for a
        chunk whose deferred check failed. A read the source hands back to the event loop is
        finished through ``submit`` and waited for."""
        try:
            loaded = self._load_blocking(chunk, defer=False)
        except FinishOnLoop as rest:
            if submit is None:
                raise
            loaded = submit(self._finish(chunk, rest)).result()
        assert not isinstance(loaded, Unverified)
        return loaded

    def _load_blocking(self, chunk: ChunkInfo, *, defer: bool = True) -> Loaded:
        assert self._read_blocking is not None
        lease = self.buffers.lease(chunk.size_bytes)
        check = None
        if defer and self._read_unchecked is not None and self._template(chunk, lease):
            data, check = self._read_unchecked(chunk, lease.view)
        else:
            data = self._read_blocking(chunk, lease.view)
        if not _is_lease(data, lease):
            if check is not None and not check():
                return self.load_verified(chunk)
            return self._materialize(chunk, data, streamed=True)
        _check_size(chunk, data)
        tensors = self._from_memo(chunk, lease)
        return tensors if check is None else Unverified(tensors, check)

    @staticmethod
    def _memo_key(chunk: ChunkInfo) -> tuple[str, str, int]:
        return (chunk.name, chunk.blake3 or chunk.sha256, chunk.size_bytes)

    def _template(self, chunk: ChunkInfo, lease: Lease) -> bool:
        """Whether the chunk was built in this buffer before, as views alone: its tensors
        are then laid over the new bytes without reading them."""
        return lease.memo is not None and lease.memo.get(self._memo_key(chunk)) is not None

    def _from_memo(self, chunk: ChunkInfo, lease: Lease) -> Tensors:
        """The chunk's bytes in ``lease`` as tensors: built the first time the chunk lands
        in this buffer (from verified bytes), then laid over each new lease by views
        (:class:`~sw_core.engine.io.rebase.Template`)."""
        assert lease.base is not None and lease.memo is not None
        key = self._memo_key(chunk)
        template: Template | None = lease.memo.get(key)
        if key not in lease.memo:
            tensors = self.skeleton.deserialize(chunk, lease.base[: chunk.size_bytes])
            built = make_packed(tensors, self.dtype, None, self.packing)
            template = lease.memo[key] = Template.of(built, lease.base)
        if template is None:  # not all views of the buffer: built over the lease each time
            return self._materialize(chunk, lease.view, streamed=True)
        return widen_plain(template.over(lease.view), self.dtype, self.buffers.take)

    def _materialize(
        self, chunk: ChunkInfo, data: bytearray | memoryview, streamed: bool
    ) -> Tensors:
        """A CPU chunk's verified bytes as tensors in the compute dtype (zero-copy where
        the dtype allows)."""
        _check_size(chunk, data)
        tensors = self.skeleton.deserialize(chunk, data)
        take = self.buffers.take if streamed else None
        return to_compute(tensors, self.dtype, take, self.packing)


def _chain(source: Future[Loaded], target: Future[Loaded]) -> None:
    """Give ``target`` (running) what ``source`` ends with."""

    def copy(done: Future[Loaded]) -> None:
        if done.cancelled():
            target.set_exception(concurrent.futures.CancelledError())
        elif (exc := done.exception()) is not None:
            target.set_exception(exc)
        else:
            target.set_result(done.result())

    source.add_done_callback(copy)


def _is_lease(data: bytearray | memoryview, lease: Lease) -> bool:
    """Whether ``data`` (what the source returned) is the lease's memory, from its start."""
    return lease.base is not None and len(data) > 0 and address(data) == address(lease.view)


def _check_size(chunk: ChunkInfo, data: bytearray | memoryview) -> None:
    if len(data) != chunk.size_bytes:
        raise SecurityError(
            f"chunk {chunk.name!r} is {len(data)} bytes, the manifest says {chunk.size_bytes}"
        )

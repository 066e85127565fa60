"""Where the engine gets chunk bytes: a storage backend directly, or the Redis chunk cache.

A :class:`ChunkSource` hands out *verified* chunk bytes in a writable buffer (the engine
builds tensors over it without a copy) and the chunk set's small files (manifest,
config, tokenizer). The engine calls these coroutines on an event loop of its choosing
(the caller's loop for the async API, a private loop thread for the sync one), so a
source must not bind itself to one loop before its first call.

Example:
    >>> store = FilesystemBackend("chunks/minilm")  # doctest: +SKIP
    >>> source = CachedChunkSource(ChunkCache.from_settings(settings), store)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from sw_core.chunks.chunk_set import read_set_file
from sw_core.chunks.manifest import ChunkInfo
from sw_core.exceptions import CacheError, StorageError
from sw_core.storage.direct import wants_direct

if TYPE_CHECKING:
    from sw_core.cache import ChunkCache
    from sw_core.storage import StorageBackend

#: A blocking verified read of a chunk into a buffer of its size: ``read(chunk, out)``.
BlockingFetch = Callable[[ChunkInfo, memoryview], "bytearray | memoryview"]
#: A digest check left to the caller: hashes the bytes read, says whether they match.
Check = Callable[[], bool]
#: A blocking read that may leave the digest check to the caller: ``(bytes, check)``, where
#: ``check`` is None when the bytes were verified as they were read.
UncheckedFetch = Callable[[ChunkInfo, memoryview], "tuple[bytearray | memoryview, Check | None]"]


@runtime_checkable
class ChunkSource(Protocol):
    """What the engine needs from wherever chunks live."""

    async def fetch(self, chunk: ChunkInfo) -> bytearray | memoryview:
        """The chunk's bytes in a writable buffer, already checked against the chunk's digest
        (``chunk.blake3`` when the manifest has it, else ``chunk.sha256``).

        A source whose ``fetch`` also takes ``out=`` (a writable buffer of exactly
        ``chunk.size_bytes`` to read into, which it may ignore) is lent reused buffers by
        the engine (:mod:`sw_core.engine.memory.buffers`)."""
        ...

    async def fetch_file(self, name: str) -> bytes:
        """A non-chunk file of the chunk set (``manifest.json``, ``config.json``...)."""
        ...

    def describe(self) -> str:
        """Where the chunks come from, for messages (never secrets)."""
        ...


def blocking_fetch(source: ChunkSource) -> BlockingFetch | None:
    """The source's blocking read into a lent buffer, where it has one.

    A source whose reads are blocking calls underneath (a folder, the Redis cache) may
    offer ``blocking_fetch()``: a function that does what ``fetch(chunk, out=out)`` does,
    on the caller's thread. The engine runs it on its own loader threads, skipping the
    event loop's hops (about 0.15 ms of interpreter time per chunk, which the compute
    thread waits for on a streamed model)."""
    offer = getattr(source, "blocking_fetch", None)
    return offer() if callable(offer) else None


class FinishOnLoop(Exception):
    """Raised by a blocking read whose chunk must be fetched on the event loop instead (a
    miss that waits for a remote loader): ``finish()`` is the coroutine that gives the
    chunk's verified bytes, so the loader thread is free for the next chunk meanwhile."""

    def __init__(self, finish: Callable[[], Awaitable[bytearray | memoryview]]) -> None:
        super().__init__("the chunk is fetched on the event loop")
        self.finish = finish


def unchecked_fetch(source: ChunkSource) -> UncheckedFetch | None:
    """The source's blocking read that leaves the digest check of some reads to the caller
    (:meth:`CachedChunkSource.unchecked_fetch`), where it has one.

    The caller runs each check before anything reads the bytes as data: the engine runs it
    on the compute thread just before the chunk's first use, where a core waits for the
    next chunk while the loader's socket reads are the bottleneck."""
    offer = getattr(source, "unchecked_fetch", None)
    return offer() if callable(offer) else None


def set_direct_io(store: StorageBackend, set_bytes: int, mode: str) -> bool:
    """Make the folders among ``store`` (a failover chain's members too) read chunks past
    the page cache when :func:`~sw_core.storage.direct.wants_direct` says so; whether it
    did."""
    on = wants_direct(mode, set_bytes)
    for backend in (store, *getattr(store, "backends", ())):
        if hasattr(backend, "direct_io"):
            backend.direct_io = on
    return on


class StoreChunkSource:
    """Chunks straight from a storage backend (folder, S3, failover chain).

    Args:
        store: a :class:`~sw_core.storage.StorageBackend`; ``load_verified`` checks the hash.
        manifest_sha256: the location's manifest pin, if any (:mod:`sw_core.chunks.pin`).
    """

    def __init__(self, store: StorageBackend, *, manifest_sha256: str | None = None) -> None:
        self.store = store
        self.manifest_sha256 = manifest_sha256

    def describe(self) -> str:
        return str(self.store.describe())

    def configure_reads(self, set_bytes: int, mode: str) -> bool:
        """Reads past the page cache for a chunk set larger than memory (``SW_DIRECT_IO``)."""
        return set_direct_io(self.store, set_bytes, mode)

    @property
    def reads_prefixes(self) -> bool:
        """Whether :meth:`fetch` reads kernel views (:meth:`ChunkInfo.kernel_view`): the
        first bytes of a chunk's file, verified against their own digest. A folder and an
        S3 store do (``StorageBackend.reads_prefixes``); others read whole chunks."""
        return bool(getattr(self.store, "reads_prefixes", False))

    async def fetch(
        self, chunk: ChunkInfo, *, out: memoryview | None = None
    ) -> bytearray | memoryview:
        if chunk.is_prefix:
            return await self._fetch_prefix(chunk, out)
        verified_into = getattr(self.store, "load_verified_into", None)
        if out is not None and verified_into is not None:  # hashed as it is read
            return await verified_into(chunk.file, out, chunk.sha256, blake3=chunk.blake3)
        load_into = getattr(self.store, "load_into", None)
        if out is not None and load_into is not None:
            data = await load_into(chunk.file, out)
            await self.store.check_integrity(chunk.file, data, chunk.sha256, blake3=chunk.blake3)
            return data
        return await self.store.load_verified(
            chunk.file, chunk.sha256, max_size_bytes=chunk.size_bytes, blake3=chunk.blake3
        )

    async def _fetch_prefix(self, chunk: ChunkInfo, out: memoryview | None) -> memoryview:
        """A kernel view: the first ``chunk.size_bytes`` of its file, checked."""
        if not self.reads_prefixes:
            raise StorageError(
                f"{self.describe()} cannot read the first bytes of {chunk.file!r} alone"
            )
        view = (memoryview(bytearray(chunk.size_bytes)) if out is None else out)[: chunk.size_bytes]
        verified_into = getattr(self.store, "load_verified_into", None)
        if verified_into is not None:  # a folder: hashed as it is read
            data: memoryview = await verified_into(
                chunk.file, view, chunk.sha256, blake3=chunk.blake3, prefix=True
            )
            return data
        data = await self.store.load_into(chunk.file, view, prefix=True)
        await self.store.check_integrity(chunk.file, data, chunk.sha256, blake3=chunk.blake3)
        return data

    async def fetch_file(self, name: str) -> bytes:
        return await read_set_file(self.store, name, self.manifest_sha256)

    def blocking_fetch(self) -> BlockingFetch | None:
        """A folder's verified read into the lent buffer (None for other stores)."""
        read = getattr(self.store, "read_verified_into", None)
        if read is None:
            return None

        def fetch(chunk: ChunkInfo, out: memoryview) -> memoryview:
            if chunk.is_prefix:
                out = out[: chunk.size_bytes]
            view: memoryview = read(
                chunk.file, out, chunk.sha256, blake3=chunk.blake3, prefix=chunk.is_prefix
            )
            return view

        return fetch


class CachedChunkSource:
    """The shared Redis chunk cache first, the storage backend on a miss.

    ``cache`` is the synchronous :class:`~sw_core.cache.ChunkCache`; it is called in
    worker threads. ``ChunkCache.lookup`` checks the bytes against the chunk's digest itself
    (a corrupt entry is dropped and reads as a miss), so a hit is verified; a miss is
    loaded from the store (into the engine's buffer when it lends one) and checked there,
    then put in the cache only when the cache admits it (:mod:`sw_core.cache.admission`): a
    sweep larger than the cache then reads the rest of its chunks as if there were no
    cache, without writing them to Redis only to evict them. A failing cache (Redis down,
    out of memory) makes fetches slower, never wrong: the store serves.

    Args:
        cache: the chunk cache.
        store: the storage backend behind it.
        manifest_sha256: the location's manifest pin, if any (:mod:`sw_core.chunks.pin`).
    """

    def __init__(
        self, cache: ChunkCache, store: StorageBackend, *, manifest_sha256: str | None = None
    ) -> None:
        self.cache = cache
        self.store = store
        self.manifest_sha256 = manifest_sha256
        self._direct = StoreChunkSource(store, manifest_sha256=manifest_sha256)
        #: Chunks this source served from the cache / loaded from the store.
        self.cache_hits = 0
        self.cache_misses = 0
        #: Misses the cache did not admit (read from the store, not put in the cache).
        self.past_cache = 0
        #: Cache calls that failed and were bypassed.
        self.cache_errors = 0
        self._counting = threading.Lock()  # fetches count from several loader threads

    def _count(self, counter: str) -> None:
        with self._counting:
            setattr(self, counter, getattr(self, counter) + 1)

    def describe(self) -> str:
        return f"chunk cache + {self.store.describe()}"

    @property
    def reads_prefixes(self) -> bool:
        """Kernel views are cached under their own digest and read from the store
        on a miss (see :attr:`StoreChunkSource.reads_prefixes`)."""
        return self._direct.reads_prefixes

    def configure_reads(self, set_bytes: int, mode: str) -> bool:
        """Misses read past the page cache for a chunk set larger than memory."""
        return self._direct.configure_reads(set_bytes, mode)

    async def fetch(
        self, chunk: ChunkInfo, *, out: memoryview | None = None
    ) -> bytearray | memoryview:
        found, admit, _ = await asyncio.to_thread(self._lookup, chunk, out)
        if found is not None:
            return found
        loaded = await self._direct.fetch(chunk, out=out)
        if admit:
            await asyncio.to_thread(self._put, chunk, loaded)
        else:
            self._count("past_cache")
        return loaded

    def blocking_fetch(self) -> BlockingFetch | None:
        """The cache, then the store's blocking read on a miss (None when the store has
        none)."""
        direct = self._direct.blocking_fetch()
        return None if direct is None else functools.partial(self._fetch_blocking, direct)

    def unchecked_fetch(self) -> UncheckedFetch | None:
        """:meth:`blocking_fetch` whose cache hits come unhashed, each with its check
        (:attr:`~sw_core.cache.admission.Lookup.check`: on a mismatch the entry is dropped
        and counted as a corruption); misses are verified as the store reads them."""
        direct = self._direct.blocking_fetch()
        return None if direct is None else functools.partial(self._fetch_unchecked, direct)

    def _fetch_blocking(
        self, direct: BlockingFetch, chunk: ChunkInfo, out: memoryview
    ) -> bytearray | memoryview:
        return self._fetch_unchecked(direct, chunk, out, later=False)[0]

    def _fetch_unchecked(
        self, direct: BlockingFetch, chunk: ChunkInfo, out: memoryview, *, later: bool = True
    ) -> tuple[bytearray | memoryview, Check | None]:
        found, admit, check = self._lookup(chunk, out, later=later)
        if found is not None:
            return found, check
        loaded = direct(chunk, out)
        if admit:
            self._put(chunk, loaded)
        else:
            self._count("past_cache")
        return loaded, None

    def _lookup(
        self, chunk: ChunkInfo, out: memoryview | None, *, later: bool = False
    ) -> tuple[bytearray | memoryview | None, bool, Check | None]:
        """``(bytes or None, whether a miss may be put in the cache, their check)``: the
        bytes are verified unless ``later`` left a check; blocking."""
        admit = True
        try:
            found = self.cache.lookup(
                chunk.sha256, chunk.size_bytes, out=out, blake3=chunk.blake3, verify_later=later
            )
            if found.data is not None and len(found.data) == chunk.size_bytes:
                self._count("cache_hits")
                return found.data, admit, found.check
            admit = found.admit
        except CacheError:
            self._count("cache_errors")
        self._count("cache_misses")
        return None, admit, None

    def _put(self, chunk: ChunkInfo, loaded: bytearray | memoryview) -> None:
        try:
            self.cache.put(chunk.sha256, loaded, verify=False)
        except CacheError:  # too large or Redis failing: serve from the store anyway
            self._count("cache_errors")

    async def fetch_file(self, name: str) -> bytes:
        return await read_set_file(self.store, name, self.manifest_sha256)

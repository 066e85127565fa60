"""The inference side of chunk loading: a chunk source backed by the cluster's loaders.

:class:`RemoteChunkSource` implements the engine's chunk-source protocol. A cache hit is
returned at once. A miss the cache would not admit (:mod:`sw_core.cache.admission`: a sweep
larger than the cache, a one-off read while the cache is full of more used chunks) is read
from storage by this worker itself, straight into the engine's buffer: no loader round trip,
no cache write, what reading the store directly costs. On an admitted miss (counted once:
the reads that follow it leave the cache's hit and miss counters alone) it subscribes to ``chunk_ready(sha256)`` *before* asking, reads
the cache once more (the chunk may have landed meanwhile), enqueues one ``load_chunk`` job
when it wins the chunk's load lease (one load cluster-wide, however many
waiters), and waits for the announcement up to ``timeout_seconds``, asking again whenever the
lease is free (a loader killed mid-load frees it within seconds). Fetches of the same chunk
in one process share a single wait.

The engine reads streamed chunks through :meth:`RemoteChunkSource.unchecked_fetch` on its
loader thread: a hit there (its digest checked on the compute thread before first use), a
miss handed back to the event loop (:class:`~sw_core.engine.io.sources.FinishOnLoop`), where
the waiting above happens while the loader thread reads the next chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import TYPE_CHECKING, Any

from arq.connections import ArqRedis
from redis.asyncio import Redis
from redis.exceptions import RedisError

from sw_core.cache import ChunkCache
from sw_core.cache.errors import out_of_memory, out_of_memory_error
from sw_core.chunks.chunk_set import open_store, read_set_file
from sw_core.chunks.manifest import ChunkInfo
from sw_core.counters import (
    SWEEP_BYTES,
    SWEEP_HIT_BYTES,
    SWEEP_HITS,
    SWEEP_READS,
    Counters,
    sweep_counter,
)
from sw_core.exceptions import CacheError, WeightServerError, error_class
from sw_core.keys import Keys
from sw_core.lua_scripts import lua_source
from sw_core.pipeline.registry import ModelRegistry
from sw_core.queue_redis import queue_redis
from sw_core.settings import Settings, redact_url
from workers.arq_compat import IN_PROGRESS_KEY_PREFIX, JOB_KEY_PREFIX
from workers.chunks.protocol import (
    LEASE_CHECK_S,
    LOAD_CHUNK,
    LOAD_LEASE_MS,
    arq_pool,
    job_deserializer,
    load_job_id,
)

if TYPE_CHECKING:  # the engine's types; loaders never import torch
    from sw_core.engine.io.sources import BlockingFetch, Check, UncheckedFetch


class RemoteChunkSource:
    """Chunks of one model through the shared cache, loaded by loader workers on a miss.

    Args:
        model: registered model name (loaders resolve its location).
        settings: Redis URL, key prefix, ``timeout_seconds``.
        cache: the chunk cache (default: :meth:`ChunkCache.from_settings`, closed by
            :meth:`close`).
        timeout_s: longest wait for one chunk (default ``settings.timeout_seconds``).
        counters: where storage reads past the cache count their bytes (``sw:stats``).
        sweep_counters: where each read counts as a sweep read of this model, and a hit
            (``Keys.stats_sweeps``).

    The asyncio clients are made on first use, on the loop of that call; use one instance
    from one event loop.
    """

    def __init__(
        self,
        model: str,
        settings: Settings,
        *,
        cache: ChunkCache | None = None,
        timeout_s: float | None = None,
        counters: Counters | None = None,
        sweep_counters: Counters | None = None,
    ) -> None:
        self.model = model
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.timeout_s = settings.timeout_seconds if timeout_s is None else timeout_s
        self._own_cache = cache is None
        self.cache = cache or ChunkCache.from_settings(settings)
        self._redis: Redis | None = None
        self._arq: ArqRedis | None = None
        self._refresh: Any = None
        self._flights: dict[str, asyncio.Future[Any]] = {}
        self.counters = counters if counters is not None else Counters()
        self.sweep_counters = sweep_counters if sweep_counters is not None else Counters()
        self._past_cache: Any = None  # a StoreChunkSource once needed
        self._reads: tuple[int, str] | None = None  # configure_reads' arguments
        #: Chunks this source had to ask a loader for / read from storage past the cache.
        self.remote_loads = 0
        self.direct_reads = 0

    def describe(self) -> str:
        return f"chunk loaders of model {self.model!r} via {redact_url(self.settings.redis_url)}"

    async def fetch(
        self, chunk: ChunkInfo, *, out: memoryview | None = None
    ) -> bytearray | memoryview:
        """The chunk's verified bytes (writable; from the cache, into ``out`` when given).

        Raises:
            WeightServerError: no loader announced the chunk within ``timeout_s``.
            SurfingError: the loader's own error (ChunkNotFoundError, SecurityError ...).
        """
        found = await self.cache.alookup(
            chunk.sha256, chunk.size_bytes, out=out, blake3=chunk.blake3
        )
        self._count(chunk, hit=found.hit)
        if found.data is not None:
            return found.data
        return await self._after_miss(chunk, out, found.admit)

    def blocking_fetch(self) -> BlockingFetch:
        """:meth:`fetch` for the engine's loader thread: a cache hit is read there; a miss
        raises :class:`~sw_core.engine.io.sources.FinishOnLoop`, whose coroutine waits for
        the loaders on the event loop this source's clients live on."""
        return lambda chunk, out: self._fetch_here(chunk, out, later=False)[0]

    def unchecked_fetch(self) -> UncheckedFetch:
        """:meth:`blocking_fetch` whose cache hits come unhashed, with their check
        (:attr:`~sw_core.cache.admission.Lookup.check`)."""
        return self._fetch_here

    def _fetch_here(
        self, chunk: ChunkInfo, out: memoryview, *, later: bool = True
    ) -> tuple[bytearray | memoryview, Check | None]:
        from sw_core.engine.io.sources import FinishOnLoop

        found = self.cache.lookup(
            chunk.sha256, chunk.size_bytes, out=out, blake3=chunk.blake3, verify_later=later
        )
        self._count(chunk, hit=found.hit)
        if found.data is not None:
            return found.data, found.check
        raise FinishOnLoop(lambda: self._after_miss(chunk, out, found.admit))

    async def _after_miss(
        self, chunk: ChunkInfo, out: memoryview | None, admit: bool
    ) -> bytearray | memoryview:
        """A counted miss: read past the cache when it would not admit the chunk, else wait
        for a loader (one wait per chunk in this process)."""
        if not admit:
            return await self._read_past_cache(chunk, out)
        flight = self._flights.get(chunk.sha256)
        if flight is None:
            flight = asyncio.ensure_future(self._load_remote(chunk))
            self._flights[chunk.sha256] = flight
            flight.add_done_callback(lambda _f: self._flights.pop(chunk.sha256, None))
        return await asyncio.shield(flight)

    async def fetch_file(self, name: str) -> bytes:
        """A small file of the chunk set (manifest, config, tokenizer), straight from storage."""
        redis = await self._clients()
        location = await ModelRegistry(redis[0], self.settings).resolve(self.model)
        store, parsed = open_store(location, self.settings, model=self.model)
        try:
            return await read_set_file(store, name, parsed.manifest_sha256)
        finally:
            await store.close()

    def configure_reads(self, set_bytes: int, mode: str) -> bool:
        """Chunks this worker reads from a folder past the cache go past the page cache too
        for a set larger than memory (``SW_DIRECT_IO``)."""
        from sw_core.storage.direct import wants_direct

        self._reads = (set_bytes, mode)
        if self._past_cache is not None:
            self._past_cache.configure_reads(set_bytes, mode)
        return wants_direct(mode, set_bytes)

    def _count(self, chunk: ChunkInfo, *, hit: bool) -> None:
        add = self.sweep_counters.incr
        add(sweep_counter(SWEEP_READS, self.model))
        add(sweep_counter(SWEEP_BYTES, self.model), chunk.size_bytes)
        if hit:
            add(sweep_counter(SWEEP_HITS, self.model))
            add(sweep_counter(SWEEP_HIT_BYTES, self.model), chunk.size_bytes)

    async def _read_past_cache(
        self, chunk: ChunkInfo, out: memoryview | None
    ) -> bytearray | memoryview:
        """A chunk the cache does not take: from storage into ``out``, verified."""
        if self._past_cache is None:
            # imported here: loaders import this module and never need torch
            from sw_core.engine.io.sources import StoreChunkSource

            redis = await self._clients()
            location = await ModelRegistry(redis[0], self.settings).resolve(self.model)
            store, parsed = open_store(
                location, self.settings, model=self.model, counters=self.counters
            )
            self._past_cache = StoreChunkSource(store, manifest_sha256=parsed.manifest_sha256)
            if self._reads is not None:
                self._past_cache.configure_reads(*self._reads)
        self.direct_reads += 1
        return await self._past_cache.fetch(chunk, out=out)

    async def _clients(self) -> tuple[Redis, ArqRedis]:
        if self._redis is None or self._arq is None:
            self._redis = queue_redis(self.settings)
            self._arq = await arq_pool(self.settings)
            self._refresh = self._redis.register_script(lua_source("lease_refresh"))
        return self._redis, self._arq

    async def _load_remote(self, chunk: ChunkInfo) -> bytearray | memoryview:
        redis, arq = await self._clients()
        channel = self.keys.chunk_ready(chunk.sha256)
        lease = self.keys.chunk_lock(chunk.sha256)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        pubsub = redis.pubsub()
        outcome: dict[str, Any] | None = None
        asked: str | None = None  # the token of the load this waiter queued, if any
        try:
            await pubsub.subscribe(channel)
            while outcome is None and loop.time() < deadline:
                # Landed meanwhile (between the caller's counted miss and now, or by a
                # loader whose announcement came before the subscription)?
                if await self.cache.acontains(chunk.sha256):
                    data = await self.cache.aget(chunk.sha256, count=False, blake3=chunk.blake3)
                    if data is not None:
                        return data
                try:
                    if asked is not None and await self._still_queued(chunk, asked):
                        # queued, not started: the lease is this waiter's to keep alive
                        await self._refresh(keys=[lease], args=[asked, LOAD_LEASE_MS])
                    else:
                        token = uuid.uuid4().hex
                        # A free lease means nobody is loading or about to: ask (again).
                        if await redis.set(lease, token, nx=True, px=LOAD_LEASE_MS):
                            asked = token
                            self.remote_loads += 1
                            await arq.enqueue_job(
                                LOAD_CHUNK,
                                self.model,
                                chunk.name,
                                chunk.sha256,
                                token,
                                _job_id=self._job_id(chunk, token),
                            )
                except RedisError as exc:
                    raise _load_request_error(exc, chunk) from exc
                outcome = await self._wait(pubsub, min(LEASE_CHECK_S, deadline - loop.time()))
        finally:
            with contextlib.suppress(Exception):
                await pubsub.unsubscribe(channel)
            await pubsub.aclose()
        where = f"chunk {chunk.name!r} of model {self.model!r}"
        if outcome is None:
            raise WeightServerError(
                f"{where} was not loaded within {self.timeout_s:g} s: is a loader running "
                "(`arq workers.LoaderSettings` or `arq workers.Settings`) on this Redis?"
            )
        if not outcome.get("ok"):
            cls = error_class(str(outcome.get("error_type")))
            raise cls(f"loading {where} failed: {outcome.get('error')}")
        data = await self.cache.aget(chunk.sha256, count=False, blake3=chunk.blake3)
        if data is None:
            raise WeightServerError(
                f"{where} was loaded but is gone from the cache already: "
                "raise SW_CACHE_SIZE_MB above the working set"
            )
        return data

    def _job_id(self, chunk: ChunkInfo, token: str) -> str:
        return load_job_id(chunk.sha256, self.settings.key_prefix, token)

    async def _still_queued(self, chunk: ChunkInfo, token: str) -> bool:
        """Whether the load this waiter queued waits in arq's queue, not yet started.

        Until a loader starts it, the asking waiter keeps the lease alive; from then on the
        loader does, so a loader that dies frees the chunk within :data:`LOAD_LEASE_MS`.
        """
        redis, _ = await self._clients()
        job_id = self._job_id(chunk, token)
        queued = await redis.exists(JOB_KEY_PREFIX + job_id)
        started = await redis.exists(IN_PROGRESS_KEY_PREFIX + job_id)
        return bool(queued) and not started

    async def _wait(self, pubsub: Any, timeout_s: float) -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (remaining := deadline - loop.time()) > 0:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=remaining)
            if message is not None and message.get("type") == "message":
                try:
                    outcome = job_deserializer(message["data"])
                except Exception:
                    continue
                if isinstance(outcome, dict):
                    return outcome
        return None

    async def close(self) -> None:
        """Close the connections (and the cache, when this source made it)."""
        if self._arq is not None:
            await self._arq.aclose()
        if self._redis is not None:
            await self._redis.aclose()
        self._redis = self._arq = None
        if self._past_cache is not None:
            await self._past_cache.store.close()
            self._past_cache = None
        if self._own_cache:
            await asyncio.to_thread(self.cache.close)


def _load_request_error(exc: RedisError, chunk: ChunkInfo) -> CacheError | WeightServerError:
    """A Redis failure while asking the loaders for ``chunk``, as a transient Surfing error
    with a readable message (redis-py's pipeline errors quote the binary arq job)."""
    where = f"asking a loader for chunk {chunk.name!r}"
    if out_of_memory(exc):
        return out_of_memory_error(where)
    return WeightServerError(f"Redis failed while {where}: {type(exc).__name__}: {str(exc)[:200]}")

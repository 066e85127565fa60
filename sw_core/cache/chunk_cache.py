"""The shared chunk cache: a content-addressed, byte-budgeted cache of chunks in Redis.

A chunk's cache id *is* its sha256 hex digest (from the manifest), so identical chunks of
different models share one entry, and every :meth:`ChunkCache.get` checks the bytes against
the BLAKE3 digest the reader's own manifest records (faster), else against the id: a corrupt
entry, or one another model's loader wrote wrongly, is dropped and read as a miss.

The cache is split into ``shards`` (:mod:`sw_core.cache.shards`; one by default), each with
its own LRU and an equal share of the budget, all of whose keys share a hash tag: on Redis
Cluster every Lua call stays in one slot. In a shard (names from :class:`~sw_core.keys.Keys`)
a chunk is stored as parts of at most ``part_size_bytes`` (1-8 MiB GETs are the fastest),
an info hash (``parts``, ``size_bytes``, ``part_bytes``), a member of the LRU sorted set
scored by a logical clock, and the meta hash holds ``bytes`` (exactly the sum of stored
sizes), ``clock``, ``hits``, ``misses``, ``evictions``, ``corruptions``, ``refusals`` and
``ticks``. A use-count hash counts recent lookups per chunk, cached or not: when the shard is
full, a missed chunk is admitted only if the entries it would evict were used less often
(:mod:`sw_core.cache.admission`), so a model larger than the cache keeps a stable part of
itself cached instead of flushing everything on each sweep.

A read with the chunk's size (:meth:`ChunkCache.lookup`) gets its first part in the lookup
script's round trip. A write uploads its parts under unique staging names with a TTL, then
one Lua script commits it: evict least recently used chunks until it fits the shard's
budget, rename the parts, record it. A writer that dies before the commit leaves only
staging keys, which expire. The cache never touches other keys, so it can share a Redis
with the job queues (use ``noeviction`` or a ``volatile-*`` policy: ``allkeys-*`` would
drop cache keys behind its back). The API is synchronous on thread-safe clients (the engine
fetches from worker threads); ``aget``/``aput``/... wrap it for asyncio callers.
"""

from __future__ import annotations

import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

import redis

from sw_core import counters as stats
from sw_core.cache.accounting import CacheAccounting
from sw_core.cache.admission import AGING_WINDOW_MIN, Lookup
from sw_core.cache.async_api import AsyncCacheAPI
from sw_core.cache.digest import ChunkDigest, check_chunk_id, target_view
from sw_core.cache.errors import cache_error
from sw_core.cache.ordered_hash import OrderedHash
from sw_core.cache.parts import layout_ok, lookup_with_first, read_parts
from sw_core.cache.shards import CacheShards, open_cache_redis
from sw_core.cache.writes import CacheWrites
from sw_core.counters import Counters
from sw_core.exceptions import CacheError, ConfigError
from sw_core.hashing import Algorithm, Expected, hex_digest
from sw_core.keys import Keys
from sw_core.lua_scripts import lua_source
from sw_core.settings import Settings


class ChunkCache(CacheAccounting, CacheWrites, AsyncCacheAPI):
    """Content-addressed chunk cache in Redis, bounded by ``cache_size_bytes`` (LRU victims,
    frequency-gated admission: :mod:`sw_core.cache.admission`).

    Example:
        >>> cache = ChunkCache(redis.Redis(), keys=Keys("sw"), cache_size_bytes=1 << 30)  # doctest: +SKIP
        >>> cache.put(sha256_hex, data)  # doctest: +SKIP
        True
        >>> bytes(cache.get(sha256_hex)) == data  # doctest: +SKIP
        True
    """

    def __init__(
        self,
        redis: redis.Redis | redis.RedisCluster,
        *,
        keys: Keys,
        cache_size_bytes: int,
        part_size_bytes: int = 4 << 20,
        counters: Counters | None = None,
        staging_ttl_ms: int = 60_000,
        hash_threads: int = 2,
        shards: int = 1,
    ) -> None:
        for name, value in (
            ("shards", shards),
            ("cache_size_bytes", cache_size_bytes),
            ("part_size_bytes", part_size_bytes),
            ("staging_ttl_ms", staging_ttl_ms),
            ("hash_threads", hash_threads),
        ):
            if value <= 0:
                raise ConfigError(f"ChunkCache {name} must be > 0, got {value!r}")
        self._clients = CacheShards(redis, keys, shards)
        self.redis = redis
        self.keys = keys
        self.budget_bytes = cache_size_bytes
        #: Each shard keeps its own LRU within an equal share of the budget.
        self.shard_budget_bytes = cache_size_bytes // shards
        self.part_size_bytes = part_size_bytes
        self.counters = counters
        self.staging_ttl_ms = staging_ttl_ms
        self._hash_threads = hash_threads
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._owns_redis = False
        self._lookup = self._clients.register_script(lua_source("cache_lookup"))
        self._commit = self._clients.register_script(lua_source("cache_commit"))
        self._drop = self._clients.register_script(lua_source("cache_drop"))
        self._clear = self._clients.register_script(lua_source("cache_clear"))
        self._info = self._clients.register_script(lua_source("cache_info"))

    @classmethod
    def from_settings(cls, settings: Settings, *, counters: Counters | None = None) -> ChunkCache:
        """A cache on its own connections to ``settings.cache_url`` (closed by :meth:`close`):
        one server, or Redis Cluster with ``cache_cluster``; ``cache_shards`` shards."""
        cache = cls(
            open_cache_redis(settings),
            shards=settings.cache_shards,
            keys=Keys(settings.key_prefix),
            cache_size_bytes=settings.cache_size_bytes,
            part_size_bytes=settings.cache_part_mb << 20,
            counters=counters,
            staging_ttl_ms=int(max(settings.timeout_seconds, 10.0) * 1000),
        )
        cache._owns_redis = True
        return cache

    # ------------------------------------------------------------------ public API
    def get(
        self,
        chunk_id: str,
        *,
        out: bytearray | memoryview | None = None,
        count: bool = True,
        blake3: str | None = None,
    ) -> memoryview | None:
        """The chunk's bytes, verified, or None on a miss.

        The bytes are checked against ``blake3`` when given (the chunk's BLAKE3 digest from
        the caller's manifest), else against ``chunk_id`` (their sha256).

        A hit marks the chunk most recently used. The result is writable (tensors can be
        made over it without a copy); it is ``out[:size]`` when ``out`` is given, else a new
        buffer. A part that vanished mid-read (evicted) or bytes that do not match the id
        (counted as a corruption; the entry is dropped) give None, so the caller reloads;
        ``out`` then holds nothing useful. ``count=False`` leaves the hit and miss counters
        alone: for the read that follows a load the caller already counted as a miss.

        Raises:
            CacheError: Redis failed (transient: connection, timeout).
        """
        expected = Expected.of(chunk_id, blake3)
        return self._read(chunk_id, out=out, verify=expected, count=count).data

    def lookup(
        self,
        chunk_id: str,
        size_bytes: int,
        *,
        out: bytearray | memoryview | None = None,
        blake3: str | None = None,
        verify_later: bool = False,
    ) -> Lookup:
        """:meth:`get` (counted), and on a miss whether the cache would admit the chunk of
        ``size_bytes`` (:mod:`sw_core.cache.admission`): a reader loads an admitted chunk
        through the cache, and reads a refused one from storage past it.

        ``verify_later``: a hit's bytes are not hashed here; :attr:`Lookup.check` hashes
        them when called, on the thread that is about to use them, and on a mismatch drops
        the entry and counts it as :meth:`get` does (a corruption; its hit becomes a miss).
        The caller must call it before anything reads the bytes as data.

        Raises:
            CacheError: Redis failed (transient: connection, timeout).
        """
        expected = Expected.of(chunk_id, blake3)
        return self._read(
            chunk_id, out=out, verify=expected, size_bytes=size_bytes, later=verify_later
        )

    def contains(self, chunk_id: str) -> bool:
        """Whether the chunk is cached (no LRU bump, not counted)."""
        check_chunk_id(chunk_id)
        shard, keys, client = self._clients.where(chunk_id)
        try:
            return bool(client.exists(keys.cache_info(chunk_id)))
        except redis.RedisError as exc:
            self._clients.failed(shard)
            raise cache_error(exc, f"checking chunk {chunk_id[:12]}") from exc

    def delete(self, chunk_id: str) -> bool:
        """Remove a chunk; False when it was not cached."""
        check_chunk_id(chunk_id)
        return self._drop_entry(chunk_id, "delete")

    def close(self) -> None:
        """Stop the hashing threads; close the Redis pool when :meth:`from_settings` made it."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        if self._owns_redis:
            self._clients.close()

    def __enter__(self) -> ChunkCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _read(
        self,
        chunk_id: str,
        *,
        out: bytearray | memoryview | None,
        verify: Expected,
        count: bool = True,
        size_bytes: int = 0,
        later: bool = False,
    ) -> Lookup:
        check_chunk_id(chunk_id)
        shard, keys, client = self._clients.where(chunk_id)
        try:
            call = self._lookup_call(chunk_id, keys, count=count, size_bytes=size_bytes)
            if size_bytes > 0 and out is not None:  # part 0 comes in the lookup's round trip
                found, first = lookup_with_first(
                    client,
                    self._lookup,
                    call,
                    keys.cache_part(chunk_id, 0),
                    target_view(out, size_bytes),
                    self.part_size_bytes,
                    None if later else self._digest(size_bytes, verify),
                )
            else:
                found, first = self._lookup(**call, client=client), None
        except redis.RedisError as exc:
            self._clients.failed(shard)
            raise cache_error(exc, f"looking up chunk {chunk_id[:12]}") from exc
        if int(found[0]) == 0:
            if first is not None:
                first.abandon()
            if count:
                self._count(stats.CACHE_MISSES)
            return Lookup(None, admit=bool(int(found[1])))
        parts, size, part_bytes = (int(v) for v in found[1:4])
        if not layout_ok(parts, size, part_bytes):
            if first is not None:
                first.abandon()
            return self._drop_miss(chunk_id, "corrupt", counted=count)
        first = first.if_fits(size, part_bytes) if first is not None else None
        if first is not None:
            target, digest = first.target, first.digest
        else:
            target = target_view(out, size)
            digest = None if later else self._digest(size, verify)
        try:
            failure = read_parts(
                client, keys, chunk_id, target, parts, part_bytes, digest, first_done=bool(first)
            )
            if failure is not None:
                return self._drop_miss(chunk_id, failure, counted=count)
            hexdigest = digest.hexdigest() if digest is not None else None
        except redis.RedisError as exc:
            self._clients.failed(shard)
            raise cache_error(exc, f"reading chunk {chunk_id[:12]}") from exc
        finally:
            if digest is not None:
                digest.abandon()
        if hexdigest is not None and not verify.matches(hexdigest):
            return self._drop_miss(chunk_id, "corrupt", counted=count)
        if count:
            self._count(stats.CACHE_HITS)
        if hexdigest is None:
            check = functools.partial(self._check_later, chunk_id, target, verify, count)
            return Lookup(target, check=check)
        return Lookup(target)

    def _digest(self, size_bytes: int, verify: Expected) -> ChunkDigest:
        return ChunkDigest(size_bytes, self._hasher, verify.algorithm, read=True)

    def _check_later(
        self, chunk_id: str, data: memoryview, verify: Expected, counted: bool
    ) -> bool:
        """The check a ``verify_later`` hit left to its caller: whether ``data`` matches."""
        if verify.matches(hex_digest(verify.algorithm, data)):
            return True
        if counted:
            self._count(stats.CACHE_HITS, -1)
        try:
            self._drop_miss(chunk_id, "corrupt", counted=counted)
        except CacheError:  # the bytes are refused all the same; the entry stays for now
            pass
        return False

    def _lookup_call(
        self, chunk_id: str, keys: Keys, *, count: bool, size_bytes: int = 0
    ) -> dict[str, list[Any]]:
        """KEYS and ARGV of ``cache_lookup.lua`` (``size_bytes`` > 0 asks for a verdict)."""
        entry = self._clients.entry_keys(chunk_id, keys)
        size, budget = max(0, int(size_bytes)), self.shard_budget_bytes
        args = [chunk_id, int(count), size, budget, keys.cache_info_prefix, AGING_WINDOW_MIN]
        return {"keys": [*entry, keys.cache_freq], "args": args}

    def _drop_miss(self, chunk_id: str, why: str, *, counted: bool) -> Lookup:
        """A found entry could not be read (``lost``) or failed its hash (``corrupt``): a
        miss whose chunk is admitted again (it was cached a moment ago)."""
        self._drop_entry(chunk_id, why, counted=counted)
        if counted:
            self._count(stats.CACHE_MISSES)
        if why == "corrupt":
            self._count(stats.CACHE_CORRUPTIONS)
        return Lookup(None, admit=True)

    def _drop_entry(self, chunk_id: str, why: str, *, counted: bool = False) -> bool:
        shard, keys, client = self._clients.where(chunk_id)
        try:
            removed = self._drop(
                keys=self._clients.entry_keys(chunk_id, keys),
                args=[chunk_id, keys.cache_part_prefix, why, int(counted)],
                client=client,
            )
        except redis.RedisError as exc:
            self._clients.failed(shard)
            raise cache_error(exc, f"removing chunk {chunk_id[:12]}") from exc
        return bool(removed)

    def _hasher(self, algorithm: Algorithm) -> OrderedHash:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._hash_threads, "sw-cache-hash")
            return OrderedHash(self._pool, algorithm)

    def _count(self, name: str, amount: int = 1) -> None:
        if self.counters is not None:
            self.counters.incr(name, amount)

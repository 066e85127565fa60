"""Chunk loading: the arq job ``load_chunk`` and what it needs.

A loader reads a chunk from storage (S3 with the local backup behind it), verifies its
sha256, puts it in the shared :class:`~sw_core.cache.ChunkCache` and announces the outcome
on the pub/sub channel ``Keys.chunk_ready(sha256)``: ``{"ok": true}`` or ``{"ok": false,
"error_type": ..., "error": ...}`` so waiters fail fast with the loader's error type.

Loads are single-flight across the cluster through a lease (``Keys.chunk_lock``): the waiter
that wins it enqueues one ``load_chunk`` job (a job id per attempt) and the loader keeps the
lease alive while it works, so a loader killed mid-load frees the chunk within
:data:`LOAD_LEASE_MS`. Results are not kept (``keep_result=0``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from sw_core.cache import ChunkCache
from sw_core.chunks.chunk_set import open_store, read_set_file
from sw_core.chunks.manifest import MANIFEST_FILE, Manifest
from sw_core.counters import Counters
from sw_core.exceptions import ModelError
from sw_core.keys import Keys
from sw_core.lua_scripts import lua_source
from sw_core.pipeline.registry import ModelRegistry
from sw_core.settings import Settings
from sw_core.storage import StorageBackend, parse_location
from workers.chunks.protocol import LEASE_REFRESH_S, LOAD_LEASE_MS, job_serializer

log = logging.getLogger(__name__)

#: How long a loader trusts a manifest it read before reading it again.
MANIFEST_TTL_S = 30.0


class ChunkLoader:
    """Storage -> verified bytes -> chunk cache -> ``chunk_ready`` announcement.

    Args:
        redis: asyncio client (registry lookups and announcements).
        settings: storage, cache and key settings.
        cache: the chunk cache (default: :meth:`ChunkCache.from_settings`).
        counters: where storage and cache count bytes, retries, failovers, evictions.
    """

    def __init__(
        self,
        redis: Redis,
        settings: Settings,
        *,
        cache: ChunkCache | None = None,
        counters: Counters | None = None,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.counters = counters if counters is not None else Counters()
        self.registry = ModelRegistry(redis, settings)
        self._own_cache = cache is None
        self.cache = cache or ChunkCache.from_settings(settings, counters=self.counters)
        self._stores: dict[tuple[str, str], StorageBackend] = {}
        self._manifests: dict[str, tuple[float, Manifest]] = {}
        #: Chunks read from storage by this loader (tests and heartbeats read it).
        self.storage_loads = 0
        self.loads_failed = 0
        self._refresh = redis.register_script(lua_source("lease_refresh"))
        self._release = redis.register_script(lua_source("lease_release"))

    def report(self) -> dict[str, str | int]:
        """Fields for the heartbeat hash."""
        return {"chunks_loaded": self.storage_loads, "loads_failed": self.loads_failed}

    def store_for(self, model: str, location: str) -> StorageBackend:
        """The (cached) storage backend of a model's location."""
        key = (model, location)
        if key not in self._stores:
            self._stores[key] = open_store(
                location, self.settings, model=model, counters=self.counters
            )[0]
        return self._stores[key]

    async def manifest(self, model: str, location: str) -> Manifest:
        """The model's manifest, re-read at most every :data:`MANIFEST_TTL_S` seconds."""
        cached = self._manifests.get(location)
        if cached is not None and time.monotonic() - cached[0] < MANIFEST_TTL_S:
            return cached[1]
        pin = parse_location(location).manifest_sha256
        raw = await read_set_file(self.store_for(model, location), MANIFEST_FILE, pin)
        manifest = Manifest.from_json(raw)
        self._manifests[location] = (time.monotonic(), manifest)
        return manifest

    async def load(
        self, model: str, chunk_name: str, sha256: str, lease_token: str | None = None
    ) -> dict[str, Any]:
        """Make the chunk cached and announce it; never raises (the outcome is announced).

        With ``lease_token`` the load keeps the chunk's single-flight lease alive while it
        runs and gives it back at the end.
        """
        keeper = None
        if lease_token is not None:
            keeper = asyncio.create_task(self._keep_lease(sha256, lease_token))
        try:
            return await self._load(model, chunk_name, sha256)
        finally:
            if keeper is not None and lease_token is not None:
                keeper.cancel()
                with contextlib.suppress(BaseException):
                    await keeper
                with contextlib.suppress(RedisError):
                    await self._release(keys=[self.keys.chunk_lock(sha256)], args=[lease_token])

    async def _keep_lease(self, sha256: str, token: str) -> None:
        lease = self.keys.chunk_lock(sha256)
        while True:
            with contextlib.suppress(RedisError):
                await self._refresh(keys=[lease], args=[token, LOAD_LEASE_MS])
            await asyncio.sleep(LEASE_REFRESH_S)

    async def _load(self, model: str, chunk_name: str, sha256: str) -> dict[str, Any]:
        try:
            location = await self.registry.resolve(model)
            manifest = await self.manifest(model, location)
            chunk = manifest.chunk(chunk_name)
            if chunk.sha256 != sha256:
                self._manifests.pop(location, None)
                raise ModelError(
                    f"chunk {chunk_name!r} of model {model!r} has sha256 {chunk.sha256[:12]}... "
                    f"in {location}, not {sha256[:12]}...: the model was re-chunked; "
                    "restart the workers that hold the old manifest"
                )
            started_s = time.monotonic()
            if await self.cache.acontains(sha256):
                log.info("chunk %s/%s already cached", model, chunk_name)
            else:
                store = self.store_for(model, location)
                data = await store.load_verified(
                    chunk.file, sha256, max_size_bytes=chunk.size_bytes, blake3=chunk.blake3
                )
                self.storage_loads += 1
                await self.cache.aput(sha256, data, verify=False)  # verified just above
                log.info(
                    "chunk %s/%s loaded from storage: %.1f MiB in %.3f s",
                    model,
                    chunk_name,
                    len(data) / (1 << 20),
                    time.monotonic() - started_s,
                )
            outcome: dict[str, Any] = {"ok": True}
        except Exception as exc:
            self.loads_failed += 1
            log.warning("loading chunk %s of model %s failed: %s", chunk_name, model, exc)
            outcome = {"ok": False, "error_type": type(exc).__name__, "error": str(exc)[:2000]}
        await self.redis.publish(self.keys.chunk_ready(sha256), job_serializer(outcome))
        return outcome

    async def close(self) -> None:
        """Close the storage backends and the cache this loader opened."""
        for store in self._stores.values():
            try:
                await store.close()
            except Exception as exc:  # closing must not hide the shutdown
                log.debug("closing %s: %s", store, exc)
        self._stores.clear()
        if self._own_cache:
            await asyncio.to_thread(self.cache.close)


async def load_chunk(
    ctx: dict[str, Any], model: str, chunk_name: str, sha256: str, lease_token: str | None = None
) -> dict[str, Any]:
    """arq job: load one chunk into the cache (see :class:`ChunkLoader`)."""
    loader: ChunkLoader = ctx["loader"]
    return await loader.load(model, chunk_name, sha256, lease_token)

"""Writing chunks into the cache: parts staged under unique names, then one commit script
that evicts least recently used entries until the chunk fits and records it
(:mod:`sw_core.cache.chunk_cache` describes the layout)."""

from __future__ import annotations

import uuid
from typing import Any

import redis

from sw_core import counters as stats
from sw_core.cache.digest import ChunkDigest, check_chunk_id
from sw_core.cache.errors import cache_error, too_large_error
from sw_core.cache.parts import upload_parts
from sw_core.cache.redis_bulk import delete_quietly
from sw_core.cache.shards import CacheShards
from sw_core.exceptions import SecurityError
from sw_core.hashing import Expected
from sw_core.utils import mib


class CacheWrites:
    """``put`` of :class:`~sw_core.cache.ChunkCache`."""

    _clients: CacheShards
    _lookup: Any
    _commit: Any
    budget_bytes: int
    shard_budget_bytes: int
    part_size_bytes: int
    staging_ttl_ms: int
    _lookup_call: Any
    _hasher: Any
    _count: Any

    def put(
        self,
        chunk_id: str,
        data: bytes | bytearray | memoryview,
        *,
        verify: bool = True,
        blake3: str | None = None,
    ) -> bool:
        """Store a chunk under its sha256 ``chunk_id``; False when it was already cached.

        Least recently used chunks are evicted to keep the stored bytes within the budget.
        With ``verify`` the bytes are hashed (overlapped with the upload; against ``blake3``
        when given, else against the id) and a mismatch raises :class:`SecurityError`; pass
        False only for bytes already verified.

        Raises:
            ChunkTooLargeError: the chunk alone exceeds the budget (nothing is uploaded).
            CacheError: Redis refused or failed (out of memory, connection); nothing is
                stored and the staged parts are removed.
        """
        check_chunk_id(chunk_id)
        view = memoryview(data).cast("B")
        size, n_shards = view.nbytes, self._clients.count
        if size > self.shard_budget_bytes:
            raise too_large_error(chunk_id, size, self.budget_bytes, n_shards)
        shard, keys, client = self._clients.where(chunk_id)
        try:
            found = self._lookup(**self._lookup_call(chunk_id, keys, count=False), client=client)
            if int(found[0]) == 1:
                return False
        except redis.RedisError as exc:
            self._clients.failed(shard)
            raise cache_error(exc, f"looking up chunk {chunk_id[:12]}") from exc
        step = self.part_size_bytes
        token = uuid.uuid4().hex
        staged = [keys.cache_staging(token, n) for n in range(max(1, -(-size // step)))]
        try:
            expected = Expected.of(chunk_id, blake3) if verify else None
            self._upload(client, chunk_id, view, staged, verify=expected)
            stored, evicted = self._commit(
                keys=[*self._clients.entry_keys(chunk_id, keys), *staged],
                args=[
                    chunk_id,
                    size,
                    self.shard_budget_bytes,
                    step,
                    keys.cache_info_prefix,
                    keys.cache_part_prefix,
                ],
                client=client,
            )
        except BaseException as exc:
            delete_quietly(client, staged)  # or the staging TTL removes them
            if isinstance(exc, redis.ResponseError) and "SWCACHE_TOO_LARGE" in str(exc):
                raise too_large_error(chunk_id, size, self.budget_bytes, n_shards) from exc
            if isinstance(exc, redis.RedisError):
                self._clients.failed(shard)
                raise cache_error(
                    exc, f"storing chunk {chunk_id[:12]} ({mib(size):.1f} MiB)"
                ) from exc
            raise
        self._count(stats.CACHE_EVICTIONS, int(evicted))
        return bool(stored)

    def _upload(
        self,
        client: redis.Redis,
        chunk_id: str,
        view: memoryview,
        staged: list[str],
        *,
        verify: Expected | None,
    ) -> None:
        """SET the parts under their staging names, hashing them alongside with ``verify``."""
        digest = ChunkDigest(view.nbytes, self._hasher, verify.algorithm) if verify else None
        step, ttl_ms = self.part_size_bytes, self.staging_ttl_ms
        hexdigest = upload_parts(client, view, staged, step, ttl_ms, digest)
        if verify is not None and not verify.matches(hexdigest or ""):
            self._count(stats.INTEGRITY_FAILURES)
            what = "its id" if verify.algorithm == "sha256" else "its manifest's blake3"
            raise SecurityError(
                f"refusing to cache chunk {chunk_id[:12]}: its bytes hash ({verify.algorithm}) to "
                f"{(hexdigest or '')[:12]}, not to {what} {verify.hexdigest[:12]}"
            )

"""A chain of backends tried in order: S3 first, the local folder as backup.

Reads go down the chain until one backend has a good copy; a corrupt copy is never returned
while a good one exists further down, and (with ``repair``) the good copy is written back
over the corrupt ones. Writes go to every backend; the primary must succeed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from sw_core.counters import INTEGRITY_FAILURES, STORAGE_FAILOVERS, Counters
from sw_core.exceptions import (
    ChunkNotFoundError,
    ConfigError,
    PermanentStorageError,
    SecurityError,
    StorageError,
    is_transient,
)
from sw_core.hashing import Expected, hex_digest_async
from sw_core.storage.base import (
    Payload,
    StorageBackend,
    check_key,
    check_prefix,
)

log = logging.getLogger(__name__)


class FailoverBackend(StorageBackend):
    """Backends tried in order (``[primary, backup, ...]``) with one API.

    Each member keeps its own retries and timeout; this class only moves down the chain.

    - ``load``/``load_verified``: a missing object -> next backend; a failure that outlived
      that backend's retries -> next backend, counting ``storage_failovers``; a hash
      mismatch (``load_verified``) -> ``integrity_failures`` and next backend. When all
      fail: ChunkNotFoundError if the object is missing everywhere, SecurityError if only
      corrupt copies exist, else StorageError naming every backend's error (transient
      unless every failure was permanent).
    - ``save``: primary first (its failure raises), then the others; their failures are
      logged and counted as errors.
    - ``exists``: true if any healthy backend has it. ``list``: union of healthy backends.
    - ``delete``: from every backend.

    Args:
        backends: the chain, primary first.
        counters: where this class counts failovers and integrity failures; defaults to
            the primary's counters (give all members one shared Counters to see one total).
        repair: write a verified good copy back over corrupt copies earlier in the chain.
    """

    name = "failover"

    def __init__(
        self,
        backends: Sequence[StorageBackend],
        *,
        counters: Counters | None = None,
        repair: bool = True,
    ) -> None:
        if not backends:
            raise ConfigError("FailoverBackend needs at least one backend")
        first = backends[0]
        super().__init__(
            counters=counters if counters is not None else first.counters,
            retry=first.retry,
            timeout_s=first.timeout_s,
        )
        self.backends: list[StorageBackend] = list(backends)
        self.repair = repair

    @property
    def primary(self) -> StorageBackend:
        return self.backends[0]

    def describe(self) -> str:
        return "failover(" + " -> ".join(b.describe() for b in self.backends) + ")"

    # ---------------------------------------------------------------- reads
    async def load(self, key: str, *, max_size_bytes: int | None = None) -> bytearray:
        return await self._load(key, None, max_size_bytes)

    async def load_verified(
        self,
        key: str,
        sha256: str,
        *,
        max_size_bytes: int | None = None,
        blake3: str | None = None,
    ) -> bytearray:
        return await self._load(key, Expected.of(sha256, blake3), max_size_bytes)

    async def _load(
        self, key: str, expected: Expected | None, max_size_bytes: int | None
    ) -> bytearray:
        check_key(key)
        missing: list[StorageBackend] = []
        corrupt: list[tuple[StorageBackend, Exception]] = []
        failed: list[tuple[StorageBackend, Exception]] = []
        last = len(self.backends) - 1
        for position, backend in enumerate(self.backends):
            try:
                data = await backend.load(key, max_size_bytes=max_size_bytes)
            except ChunkNotFoundError:
                missing.append(backend)
                continue
            except SecurityError as exc:  # e.g. a copy over the size limit: a bad copy
                self.counters.incr(INTEGRITY_FAILURES)
                corrupt.append((backend, exc))
                log.warning("bad copy of %r in %s: %s", key, backend.describe(), exc)
                continue
            except Exception as exc:
                if not isinstance(exc, StorageError) and not is_transient(exc):
                    raise
                failed.append((backend, exc))
                if position < last:
                    self.counters.incr(STORAGE_FAILOVERS)
                    log.warning(
                        "load %r from %s failed (%s); failing over to %s",
                        key,
                        backend.describe(),
                        exc,
                        self.backends[position + 1].describe(),
                    )
                continue
            if expected is not None:
                actual = await hex_digest_async(expected.algorithm, data)
                if not expected.matches(actual):
                    self.counters.incr(INTEGRITY_FAILURES)
                    mismatch = SecurityError(
                        f"{expected.algorithm} {actual[:16]}... instead of "
                        f"{expected.hexdigest[:16]}... ({len(data)} bytes)"
                    )
                    corrupt.append((backend, mismatch))
                    log.warning("corrupt copy of %r in %s: %s", key, backend.describe(), mismatch)
                    continue
                if corrupt and self.repair:
                    await self._repair(key, data, [b for b, _ in corrupt])
            return data
        raise self._all_failed(key, missing, corrupt, failed)

    async def _repair(self, key: str, data: bytearray, targets: list[StorageBackend]) -> None:
        for target in targets:
            try:
                await target.save(key, data)
            except Exception as exc:
                self.counters.count_error(exc)
                log.warning("could not repair %r in %s: %s", key, target.describe(), exc)
            else:
                log.warning(
                    "repaired corrupt %r in %s with a verified copy", key, target.describe()
                )

    def _all_failed(
        self,
        key: str,
        missing: list[StorageBackend],
        corrupt: list[tuple[StorageBackend, Exception]],
        failed: list[tuple[StorageBackend, Exception]],
    ) -> Exception:
        parts = [f"{b.describe()}: missing" for b in missing]
        parts += [f"{b.describe()}: corrupt copy: {e}" for b, e in corrupt]
        parts += [f"{b.describe()}: {type(e).__name__}: {e}" for b, e in failed]
        detail = "; ".join(parts)
        if failed:
            if any(is_transient(e) for _, e in failed):
                return StorageError(f"cannot load {key!r} from any backend: {detail}")
            return PermanentStorageError(f"cannot load {key!r} from any backend: {detail}")
        if corrupt:
            return SecurityError(f"only corrupt copies of {key!r} exist: {detail}")
        return ChunkNotFoundError(f"{key!r} not found in any backend: {detail}")

    async def exists(self, key: str) -> bool:
        check_key(key)
        errors: list[str] = []
        for backend in self.backends:
            try:
                if await backend.exists(key):
                    return True
            except StorageError as exc:
                errors.append(f"{backend.describe()}: {exc}")
        if len(errors) == len(self.backends):
            raise StorageError(f"cannot check {key!r} in any backend: {'; '.join(errors)}")
        return False

    async def list(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        keys: set[str] = set()
        errors: list[Exception] = []
        for backend in self.backends:
            try:
                keys.update(await backend.list(prefix))
            except StorageError as exc:
                errors.append(exc)
        if len(errors) == len(self.backends):
            detail = "; ".join(
                f"{b.describe()}: {e}" for b, e in zip(self.backends, errors, strict=True)
            )
            if all(isinstance(e, ChunkNotFoundError) for e in errors):
                raise ChunkNotFoundError(f"no backend holds a store to list: {detail}")
            raise StorageError(f"cannot list {prefix!r} in any backend: {detail}")
        return sorted(keys)

    # ---------------------------------------------------------------- writes
    async def save(self, key: str, data: Payload) -> None:
        check_key(key)
        await self.primary.save(key, data)
        others = self.backends[1:]
        results = await asyncio.gather(*(b.save(key, data) for b in others), return_exceptions=True)
        for backend, result in zip(others, results, strict=True):
            if isinstance(result, Exception):
                self.counters.count_error(result)
                log.warning("save %r to backup %s failed: %s", key, backend.describe(), result)
            elif isinstance(result, BaseException):
                raise result

    async def delete(self, key: str) -> None:
        check_key(key)
        results = await asyncio.gather(
            *(b.delete(key) for b in self.backends), return_exceptions=True
        )
        errors = [
            f"{b.describe()}: {r}"
            for b, r in zip(self.backends, results, strict=True)
            if isinstance(r, BaseException)
        ]
        if errors:
            raise StorageError(f"delete {key!r} failed in: {'; '.join(errors)}")

    async def close(self) -> None:
        for backend in self.backends:
            await backend.close()

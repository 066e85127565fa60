"""The storage backend API shared by the local folder, S3/MinIO and their failover chain.

Every backend speaks the same async API: :meth:`StorageBackend.load` (a writable
``bytearray``, so tensors can be built over it without a copy), ``save``, ``exists``,
``list``, ``delete`` and :meth:`StorageBackend.load_verified` (checked against the
manifest's BLAKE3 digest when it has one, else its sha256).

:class:`RetryingBackend` gives a concrete backend its error policy: each single attempt
runs under ``asyncio.wait_for(timeout_s)``; transient failures (connection refused or
reset, timeouts, 5xx, throttling) are retried per the :class:`~sw_core.retry.RetryPolicy`;
a missing object raises :class:`~sw_core.exceptions.ChunkNotFoundError` at once.

Errors a backend raises:

- :class:`~sw_core.exceptions.ChunkNotFoundError` -- the key (or its bucket/folder) is
  missing. Permanent.
- :class:`~sw_core.exceptions.StorageError` -- transient: worth retrying later.
- :class:`PermanentStorageError` -- the backend refused the request (access denied, bad
  credentials, invalid bucket name). Retrying cannot help; fix the configuration.
- :class:`~sw_core.exceptions.SecurityError` -- a key that escapes the store, a hash
  mismatch, or an object over the caller's size limit.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import ClassVar, TypeVar

from sw_core.counters import INTEGRITY_FAILURES, STORAGE_BYTES_READ, STORAGE_RETRIES, Counters
from sw_core.exceptions import (
    ConfigError,
    SecurityError,
    StorageError,
    SurfingError,
    is_transient,
)
from sw_core.hashing import Expected, hex_digest_async
from sw_core.retry import RetryPolicy, retry_async

T = TypeVar("T")

#: Bytes-like payloads a backend accepts in :meth:`StorageBackend.save`.
Payload = bytes | bytearray | memoryview
#: Injectable sleep (tests record the backoff delays instead of waiting).
SleepFn = Callable[[float], Awaitable[None]]


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative POSIX path, else raise SecurityError.

    Refused: empty keys, absolute paths, ``.``/``..``/empty components, backslashes and
    NUL bytes -- anything that could point outside the store on some backend.
    """
    if not isinstance(key, str) or not key:
        raise SecurityError(f"storage key must be a non-empty string, got {key!r}")
    if "\x00" in key or "\\" in key:
        raise SecurityError(f"storage key {key!r} holds a NUL byte or a backslash")
    if key.startswith("/"):
        raise SecurityError(f"storage key {key!r} is absolute; keys are relative to the store")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise SecurityError(f"storage key {key!r} has a {part or 'empty'!r} component")
    return key


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a safe listing prefix ('' or a relative partial key)."""
    if prefix == "":
        return prefix
    if "\x00" in prefix or "\\" in prefix or prefix.startswith("/"):
        raise SecurityError(f"storage prefix {prefix!r} is absolute or holds NUL/backslash")
    if any(part in (".", "..") for part in prefix.split("/")):
        raise SecurityError(f"storage prefix {prefix!r} has a '.' or '..' component")
    return prefix


def size_to_read(key: str, where: str, size: int, limit: int | None, *, prefix: bool) -> int:
    """How many bytes of the object ``key`` (``size`` bytes, in ``where``) a read takes:
    with ``prefix`` its first ``limit`` bytes (a shorter object does not match what the
    caller expects), else all of it, refused when over ``limit``.

    Raises:
        SecurityError: the object is shorter than the prefix, or over the limit.
    """
    if prefix:
        if limit is None or size < limit:
            raise SecurityError(
                f"{key!r} in {where} is {size} bytes, shorter than the {limit} bytes to read"
            )
        return limit
    if limit is not None and size > limit:
        raise SecurityError(f"{key!r} in {where} is {size} bytes, over the limit of {limit} bytes")
    return size


async def sha256_hex(data: Payload) -> str:
    """sha256 hex digest of ``data``; large payloads are hashed off the event loop."""
    return await hex_digest_async("sha256", data)


class StorageBackend(ABC):
    """Async object store of chunk-set files, addressed by relative POSIX keys.

    Args:
        counters: where to count bytes read, retries, failovers and integrity failures
            (a private :class:`~sw_core.counters.Counters` when omitted).
        retry: backoff for transient failures (:class:`~sw_core.retry.RetryPolicy` defaults).
        timeout_s: limit of each single attempt of each call.
        sleep: how to wait between retries (tests inject a recorder).
    """

    #: Short kind name for logs and messages ("filesystem", "s3", ...).
    name: ClassVar[str] = "storage"
    #: Whether ``load_into(key, out, prefix=True)`` reads an object's first ``out.nbytes``
    #: bytes alone (a chunk's kernel view, :meth:`~sw_core.chunks.manifest.ChunkInfo.kernel_view`).
    reads_prefixes: ClassVar[bool] = False

    def __init__(
        self,
        *,
        counters: Counters | None = None,
        retry: RetryPolicy | None = None,
        timeout_s: float = 30.0,
        sleep: SleepFn = asyncio.sleep,
    ) -> None:
        if not timeout_s > 0:
            raise ConfigError(f"storage timeout_s must be > 0, got {timeout_s!r}")
        self.counters = counters if counters is not None else Counters()
        self.retry = retry if retry is not None else RetryPolicy()
        self.timeout_s = float(timeout_s)
        self._sleep = sleep

    @abstractmethod
    def describe(self) -> str:
        """Where this backend stores data, for messages; never contains secrets."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"

    @abstractmethod
    async def load(self, key: str, *, max_size_bytes: int | None = None) -> bytearray:
        """The object's bytes (writable).

        Raises:
            ChunkNotFoundError: no such object.
            SecurityError: unsafe key, or the object is over ``max_size_bytes``.
            StorageError: transient failure that outlived the retries.
        """

    @abstractmethod
    async def save(self, key: str, data: Payload) -> None:
        """Store ``data`` under ``key``, replacing any previous object atomically."""

    @abstractmethod
    async def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    @abstractmethod
    async def list(self, prefix: str = "") -> list[str]:
        """Sorted keys that start with ``prefix`` (a plain string prefix, as in S3).

        Raises ChunkNotFoundError when the store itself (bucket, root folder) is missing.
        """

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove ``key``; deleting a missing key is not an error."""

    async def load_verified(
        self,
        key: str,
        sha256: str,
        *,
        max_size_bytes: int | None = None,
        blake3: str | None = None,
    ) -> bytearray:
        """:meth:`load`, then check the digest; a mismatch counts ``integrity_failures``.

        The bytes are checked against ``blake3`` when given (the manifest records one),
        else against ``sha256``.

        Raises:
            SecurityError: the stored bytes do not hash to the expected digest.
        """
        data = await self.load(key, max_size_bytes=max_size_bytes)
        await self.check_integrity(key, data, sha256, blake3=blake3)
        return data

    async def check_integrity(
        self, key: str, data: Payload, sha256: str, *, blake3: str | None = None
    ) -> None:
        """Raise SecurityError (and count it) unless ``data`` hashes to ``blake3`` (when
        given) or else to ``sha256``."""
        expected = Expected.of(sha256, blake3)
        actual = await hex_digest_async(expected.algorithm, data)
        if not expected.matches(actual):
            self.counters.incr(INTEGRITY_FAILURES)
            raise SecurityError(
                f"{key!r} in {self.describe()} is corrupt: {expected.algorithm} "
                f"{actual[:16]}... instead of {expected.hexdigest[:16]}... ({len(data)} bytes)"
            )

    async def close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release connections and threads; the backend is unusable afterwards."""


class RetryingBackend(StorageBackend):
    """A backend made of single-attempt ``_*_once`` methods, given timeouts and retries.

    Subclasses implement the ``_*_once`` methods and raise Surfing errors from them
    (ChunkNotFoundError, StorageError, PermanentStorageError, SecurityError). Library
    ``ConnectionError``/``TimeoutError`` that slip through become transient StorageErrors.
    """

    # ---------------------------------------------------------------- single attempts
    @abstractmethod
    async def _load_once(self, key: str, max_size_bytes: int | None) -> bytearray: ...

    @abstractmethod
    async def _save_once(self, key: str, data: Payload) -> None: ...

    @abstractmethod
    async def _exists_once(self, key: str) -> bool: ...

    @abstractmethod
    async def _list_once(self, prefix: str) -> list[str]: ...

    @abstractmethod
    async def _delete_once(self, key: str) -> None: ...

    # ---------------------------------------------------------------- public API
    async def load(self, key: str, *, max_size_bytes: int | None = None) -> bytearray:
        check_key(key)
        data = await self._call("load", key, lambda: self._load_once(key, max_size_bytes))
        self.counters.incr(STORAGE_BYTES_READ, len(data))
        return data

    async def save(self, key: str, data: Payload) -> None:
        check_key(key)
        await self._call("save", key, lambda: self._save_once(key, data))

    async def exists(self, key: str) -> bool:
        check_key(key)
        return await self._call("exists", key, lambda: self._exists_once(key))

    async def list(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        return await self._call("list", prefix, lambda: self._list_once(prefix))

    async def delete(self, key: str) -> None:
        check_key(key)
        await self._call("delete", key, lambda: self._delete_once(key))

    # ---------------------------------------------------------------- machinery
    async def _call(self, op: str, key: str, attempt: Callable[[], Awaitable[T]]) -> T:
        def on_retry(_attempt: int, _exc: BaseException, _delay_s: float) -> None:
            self.counters.incr(STORAGE_RETRIES)

        return await retry_async(
            lambda: self._attempt(op, key, attempt),
            self.retry,
            what=f"{self.name} {op} {key!r}",
            on_retry=on_retry,
            sleep=self._sleep,
        )

    async def _attempt(self, op: str, key: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """One try under the timeout; stray library errors become Surfing errors."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await attempt()
        except SurfingError:
            raise
        except TimeoutError:
            raise StorageError(
                f"{op} {key!r} in {self.describe()} timed out after {self.timeout_s:g} s"
            ) from None
        except Exception as exc:
            if is_transient(exc):
                raise StorageError(f"{op} {key!r} in {self.describe()} failed: {exc}") from exc
            raise

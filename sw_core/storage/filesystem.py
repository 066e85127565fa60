"""A folder as a storage backend: the local backup of the chunk store, or a chunk set on disk."""

from __future__ import annotations

import asyncio
import errno
import os
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sw_core.counters import INTEGRITY_FAILURES, STORAGE_BYTES_READ, Counters
from sw_core.exceptions import (
    ChunkNotFoundError,
    PermanentStorageError,
    SecurityError,
    StorageError,
)
from sw_core.hashing import Expected, OrderedHash, new_hasher
from sw_core.retry import RetryPolicy
from sw_core.storage.base import (
    Payload,
    RetryingBackend,
    SleepFn,
    check_key,
    size_to_read,
)
from sw_core.storage.direct import (
    PIECE_BYTES,
    DirectUnsupported,
    drop_cached,
    is_aligned,
    read_direct,
)

#: Suffix of the temporary files behind atomic writes; ``list`` never shows them.
PARTIAL_SUFFIX = ".sw-partial"

_MISSING_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR}
#: Pieces of a buffered read checked with BLAKE3, each hashed on the reading thread right
#: after it landed, while it is still in the core's cache (a read from the page cache is a
#: memory copy: handing the chunk to a hash thread on the other core read it from memory a
#: second time and cost a thread hop per chunk; 1 MiB pieces were 5-8 % faster per streamed
#: token than the helper on 2 cores). Direct reads keep the helper: there the hash overlaps
#: the disk.
INLINE_PIECE_BYTES = 1 << 20

_hash_threads: ThreadPoolExecutor | None = None
_hash_lock = threading.Lock()


def _hash_pool() -> ThreadPoolExecutor:
    """Two threads that hash pieces of chunk reads while the next pieces are read (one per
    read in flight; a third read waits for one of them)."""
    global _hash_threads
    with _hash_lock:
        if _hash_threads is None:
            _hash_threads = ThreadPoolExecutor(2, thread_name_prefix="sw-read-hash")
        return _hash_threads


_REFUSED_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}


class FilesystemBackend(RetryingBackend):
    """Objects as files under ``root``; keys are relative POSIX paths.

    Keys that would leave ``root`` (``..``, absolute paths, symlinks pointing outside) are
    refused with SecurityError. Writes are atomic (temporary file, fsync, ``os.replace``);
    reads go straight into one preallocated ``bytearray``. Blocking I/O runs in threads.

    With ``direct_io`` (set by the engine's sources for a chunk set larger than memory,
    ``SW_DIRECT_IO``), :meth:`load_into` reads past the page cache into an aligned buffer
    (:mod:`sw_core.storage.direct`), and buffered reads drop the file's pages afterwards.

    Example:
        >>> backend = FilesystemBackend("/var/lib/sw/backup/minilm")  # doctest: +SKIP
        >>> data = await backend.load_verified("block_000.safetensors", sha)  # doctest: +SKIP
    """

    name = "filesystem"
    reads_prefixes = True

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        counters: Counters | None = None,
        retry: RetryPolicy | None = None,
        timeout_s: float = 30.0,
        sleep: SleepFn = asyncio.sleep,
        direct_io: bool = False,
    ) -> None:
        super().__init__(counters=counters, retry=retry, timeout_s=timeout_s, sleep=sleep)
        self.root = Path(root).expanduser().absolute()
        #: Read chunks past the page cache (see the class doc).
        self.direct_io = direct_io
        #: Reads that went past the page cache / the file system refused it.
        self.direct_reads = 0
        self._direct_refused = False

    def describe(self) -> str:
        return str(self.root)

    # ---------------------------------------------------------------- paths
    def path_of(self, key: str) -> Path:
        """The file that holds ``key``; SecurityError if it would lie outside ``root``."""
        path = os.path.join(self.root, check_key(key))
        # os.path.realpath on strings: a third of Path.resolve's cost, paid on every read
        real_root = os.path.realpath(self.root)
        if not os.path.realpath(path).startswith(real_root.rstrip(os.sep) + os.sep):
            raise SecurityError(f"storage key {key!r} leads outside {self.root} (symlink?)")
        return Path(path)

    def _error(self, exc: OSError, op: str, key: str) -> Exception:
        if isinstance(exc, FileNotFoundError | NotADirectoryError | IsADirectoryError) or (
            exc.errno in _MISSING_ERRNOS
        ):
            return ChunkNotFoundError(f"{key!r} not found in folder {self.root}")
        if isinstance(exc, PermissionError) or exc.errno in _REFUSED_ERRNOS:
            return PermanentStorageError(
                f"{op} {key!r} in folder {self.root} refused: {exc.strerror or exc}; "
                "check the folder's permissions"
            )
        return StorageError(f"{op} {key!r} in folder {self.root} failed: {exc}")

    # ---------------------------------------------------------------- single attempts
    async def _load_once(self, key: str, max_size_bytes: int | None) -> bytearray:
        path = self.path_of(key)
        try:
            return await asyncio.to_thread(self._read, path, key, max_size_bytes)
        except OSError as exc:
            if isinstance(exc, StorageError):
                raise
            raise self._error(exc, "load", key) from exc

    async def load_into(self, key: str, out: memoryview, *, prefix: bool = False) -> memoryview:
        """Read the object into ``out`` (a writable buffer of at least its size, which is also
        the size limit); returns the filled ``out[:size]``. With ``prefix``, its first
        ``out.nbytes`` bytes only. No retries: a failure raises and the caller falls back
        to :meth:`load`."""
        check_key(key)
        path = self.path_of(key)
        try:
            view = await asyncio.to_thread(
                self._read, path, key, out.nbytes, out, None, PIECE_BYTES, prefix
            )
        except OSError as exc:
            if isinstance(exc, StorageError):
                raise
            raise self._error(exc, "load", key) from exc
        self.counters.incr(STORAGE_BYTES_READ, view.nbytes)
        return view

    async def load_verified_into(
        self,
        key: str,
        out: memoryview,
        sha256: str,
        *,
        blake3: str | None = None,
        prefix: bool = False,
    ) -> memoryview:
        """:meth:`read_verified_into` on a worker thread."""
        check_key(key)
        return await asyncio.to_thread(
            self.read_verified_into, key, out, sha256, blake3=blake3, prefix=prefix
        )

    def read_verified_into(
        self,
        key: str,
        out: memoryview,
        sha256: str,
        *,
        blake3: str | None = None,
        prefix: bool = False,
    ) -> memoryview:
        """Read the object into ``out`` (a writable buffer of at least its size, which is
        also the size limit), checked against ``blake3`` (else ``sha256``) as it is read;
        returns the filled ``out[:size]``. With ``prefix``, read (and check) only the
        object's first ``out.nbytes`` bytes. Blocking: call it from a worker thread. Each
        piece is hashed as soon as it landed -- on the reading thread for a buffered BLAKE3
        read (:data:`INLINE_PIECE_BYTES`), else on a helper thread while the next piece is
        read, so the disk does not wait for the hash. No retries.

        Raises:
            SecurityError: the bytes do not match (counted in ``integrity_failures``).
            StorageError: the read failed (ChunkNotFoundError when the file is missing).
        """
        path = self.path_of(key)
        expected = Expected.of(sha256, blake3)
        try:
            if expected.algorithm == "blake3" and not self._reads_direct():
                inline = new_hasher("blake3")
                view = self._read(
                    path, key, out.nbytes, out, inline.update, INLINE_PIECE_BYTES, prefix
                )
                actual = inline.hexdigest()
            else:
                digest = OrderedHash(_hash_pool(), expected.algorithm)
                try:
                    view = self._read(path, key, out.nbytes, out, digest.feed, prefix=prefix)
                except BaseException:
                    digest.abandon()
                    raise
                actual = digest.hexdigest()
        except OSError as exc:
            if isinstance(exc, StorageError):
                raise
            raise self._error(exc, "load", key) from exc
        self.counters.incr(STORAGE_BYTES_READ, view.nbytes)
        if not expected.matches(actual):
            self.counters.incr(INTEGRITY_FAILURES)
            raise SecurityError(
                f"{key!r} in {self.describe()} is corrupt: {expected.algorithm} "
                f"{actual[:16]}... instead of {expected.hexdigest[:16]}... ({view.nbytes} bytes)"
            )
        return view

    def _reads_direct(self) -> bool:
        return self.direct_io and not self._direct_refused

    def _read(
        self,
        path: Path,
        key: str,
        max_size_bytes: int | None,
        out: memoryview | None = None,
        feed: Callable[[memoryview], object] | None = None,
        piece_bytes: int = PIECE_BYTES,
        prefix: bool = False,
    ) -> Any:
        """The file's bytes (into ``out`` when given); with ``prefix``, its first
        ``max_size_bytes`` bytes only (a shorter file is an error)."""
        with open(path, "rb", buffering=0) as handle:
            size = size_to_read(
                key,
                str(self.root),
                os.fstat(handle.fileno()).st_size,
                max_size_bytes,
                prefix=prefix,
            )
            if out is not None and self._reads_direct():
                if is_aligned(out):
                    try:
                        read_direct(path, out, size, feed)
                        self.direct_reads += 1
                        return out[:size]
                    except DirectUnsupported:  # nothing was read: read it buffered
                        self._direct_refused = True
            data: Any = bytearray(size) if out is None else out[:size]
            view = memoryview(data)
            got = 0
            while got < size:
                n = handle.readinto(view[got : got + piece_bytes])
                if not n:
                    break
                if feed is not None:
                    feed(view[got : got + n])
                got += n
            if got != size or (not prefix and handle.read(1)):
                raise StorageError(f"{key!r} in {self.root} changed size while being read")
            if self.direct_io:
                drop_cached(handle.fileno())
        return data

    async def _save_once(self, key: str, data: Payload) -> None:
        path = self.path_of(key)
        try:
            await asyncio.to_thread(self._write, path, data)
        except OSError as exc:
            if isinstance(exc, StorageError):
                raise
            raise self._error(exc, "save", key) from exc

    @staticmethod
    def _write(path: Path, data: Payload) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX)
        try:
            with open(fd, "wb", buffering=0) as handle:
                view = memoryview(data)
                while view:
                    view = view[handle.write(view) :]
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def _exists_once(self, key: str) -> bool:
        path = self.path_of(key)
        return await asyncio.to_thread(path.is_file)

    async def _list_once(self, prefix: str) -> list[str]:
        try:
            return await asyncio.to_thread(self._walk, prefix)
        except OSError as exc:
            if isinstance(exc, StorageError):
                raise
            raise self._error(exc, "list", prefix or ".") from exc

    def _walk(self, prefix: str) -> list[str]:
        if not self.root.is_dir():
            raise ChunkNotFoundError(f"folder {self.root} does not exist")
        # Start at the deepest folder the prefix names, so a listing stays cheap.
        start = self.root
        folder = prefix.rpartition("/")[0]
        if folder:
            start = self.root / folder
            if not start.is_dir():
                return []
        keys: list[str] = []
        for dirpath, _dirnames, filenames in os.walk(start):
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for filename in filenames:
                if filename.endswith(PARTIAL_SUFFIX):
                    continue
                key = filename if rel_dir == "." else f"{rel_dir}/{filename}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    async def _delete_once(self, key: str) -> None:
        path = self.path_of(key)
        try:
            await asyncio.to_thread(path.unlink, missing_ok=True)
        except OSError as exc:
            raise self._error(exc, "delete", key) from exc

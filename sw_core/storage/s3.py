"""S3/MinIO as a storage backend, on the ``minio`` SDK with concurrent ranged reads.

The SDK is synchronous: every request runs in this backend's own thread pool (``concurrency``
threads). Objects larger than ``range_size_bytes`` are read with concurrent ranged GETs into
one preallocated ``bytearray``; the first range tells the object's size (``Content-Range``),
so a small object costs one request. Later ranges carry ``If-Match: <etag>``, so an object
replaced in the middle of a read fails the attempt (and is retried) instead of mixing two
versions.

The urllib3 pool has short timeouts and no retries of its own: our
:class:`~sw_core.retry.RetryPolicy` governs; :mod:`sw_core.storage.s3_errors` says which
failures are transient. A read of an object's first bytes alone (``load_into(...,
prefix=True)``: a packed chunk's kernel view) takes the same ranges, up to that size.

ETags of multipart uploads (objects over 5 MiB) are not MD5s; integrity rests on our sha256.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.helpers import DictType

from sw_core.counters import STORAGE_BYTES_READ, Counters
from sw_core.exceptions import (
    ChunkNotFoundError,
    ConfigError,
    SecurityError,
    StorageError,
)
from sw_core.retry import RetryPolicy
from sw_core.settings import Secret, Settings
from sw_core.storage.base import Payload, RetryingBackend, SleepFn, check_key, size_to_read
from sw_core.storage.s3_errors import NOT_FOUND_CODES, TRANSIENT_CODES, s3_error

__all__ = ["NOT_FOUND_CODES", "TRANSIENT_CODES", "S3Backend"]

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Size of each read from an HTTP response into the destination buffer.
_READ_BLOCK_BYTES = 1 << 20
#: Parts of one multipart upload sent at once (the minio SDK's default, made explicit).
_UPLOAD_PARTS = 3


def _reveal(value: str | None) -> str | None:
    return value.reveal() if isinstance(value, Secret) else value


def _split_endpoint(endpoint: str, secure: bool) -> tuple[str, bool]:
    """``http://host:port`` / ``https://host`` / ``host:port`` -> (``host:port``, secure)."""
    endpoint = endpoint.strip().rstrip("/")
    for scheme, is_secure in (("https://", True), ("http://", False)):
        if endpoint.lower().startswith(scheme):
            return endpoint[len(scheme) :], is_secure
    if "/" in endpoint or not endpoint:
        raise ConfigError(f"S3 endpoint must be host[:port] or a http(s):// URL, got {endpoint!r}")
    return endpoint, secure


class S3Backend(RetryingBackend):
    """Objects in an S3/MinIO bucket, under an optional key ``prefix``.

    Args:
        bucket_name: the bucket.
        endpoint: ``host:port`` or ``http(s)://host:port`` (the scheme wins over ``secure``).
        access_key, secret_key: credentials (plain or :class:`~sw_core.settings.Secret`);
            never shown in messages.
        secure: HTTPS.
        region: given so the SDK never asks the server for the bucket's location.
        prefix: key prefix inside the bucket (a "folder"), e.g. ``models/minilm``.
        range_size_bytes: objects larger than this are read in ranges of this size.
        concurrency: threads, i.e. concurrent requests, of this backend.
        counters, retry, timeout_s, sleep: see :class:`~sw_core.storage.base.StorageBackend`.
    """

    name = "s3"
    reads_prefixes = True

    def __init__(
        self,
        bucket_name: str,
        *,
        endpoint: str,
        access_key: str | None = None,
        secret_key: str | None = None,
        secure: bool = False,
        region: str = "us-east-1",
        prefix: str = "",
        range_size_bytes: int = 8 << 20,
        concurrency: int = 4,
        counters: Counters | None = None,
        retry: RetryPolicy | None = None,
        timeout_s: float = 30.0,
        sleep: SleepFn = asyncio.sleep,
    ) -> None:
        super().__init__(counters=counters, retry=retry, timeout_s=timeout_s, sleep=sleep)
        if range_size_bytes <= 0 or concurrency <= 0:
            raise ConfigError("S3 range_size_bytes and concurrency must be > 0")
        if not bucket_name:
            raise ConfigError("S3 bucket name is empty")
        self.bucket_name = bucket_name
        self.endpoint, self.secure = _split_endpoint(endpoint, secure)
        self.region = region
        self.prefix = prefix.strip("/")
        self.range_size_bytes = int(range_size_bytes)
        self.concurrency = int(concurrency)
        self._http = http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(self.timeout_s, 10.0), read=self.timeout_s),
            # each of the `concurrency` threads may upload _UPLOAD_PARTS parts at once
            maxsize=self.concurrency * _UPLOAD_PARTS + 2,
            retries=False,
        )
        try:
            self.client = Minio(
                self.endpoint,
                access_key=_reveal(access_key),
                secret_key=_reveal(secret_key),
                secure=self.secure,
                region=region,
                http_client=http,
            )
        except ValueError as exc:
            raise ConfigError(f"bad S3 settings for {self.describe()}: {exc}") from None
        self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="sw-s3")

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        prefix: str = "",
        *,
        bucket_name: str | None = None,
        counters: Counters | None = None,
        sleep: SleepFn = asyncio.sleep,
    ) -> S3Backend:
        """An S3Backend for ``settings.s3_*`` (bucket ``bucket_name`` or ``s3_bucket``)."""
        if not settings.s3_endpoint:
            raise ConfigError(
                "no S3 endpoint: set SW_S3_ENDPOINT (or --s3-endpoint) to host:port of MinIO/S3"
            )
        return cls(
            bucket_name or settings.s3_bucket,
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            secure=settings.s3_secure,
            region=settings.s3_region,
            prefix=prefix,
            range_size_bytes=settings.s3_range_mb << 20,
            concurrency=settings.s3_concurrency,
            counters=counters,
            retry=RetryPolicy.from_settings(settings),
            timeout_s=settings.timeout_seconds,
            sleep=sleep,
        )

    def describe(self) -> str:
        scheme = "https" if self.secure else "http"
        location = f"s3://{self.bucket_name}/{self.prefix}".rstrip("/")
        return f"{location} at {scheme}://{self.endpoint}"

    def object_name(self, key: str) -> str:
        """The object name of ``key`` in the bucket (the prefix joined in front)."""
        return f"{self.prefix}/{key}" if self.prefix else key

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._http.clear()

    # ---------------------------------------------------------------- plumbing
    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, func, *args)

    def _error(self, exc: Exception, op: str, key: str) -> Exception:
        """The Surfing error for a minio/urllib3 failure of ``op`` on ``key``."""
        where = f"s3://{self.bucket_name}/{self.object_name(key)} at {self.endpoint}"
        return s3_error(exc, op, where)

    async def _guarded(self, op: str, key: str, func: Callable[..., T], *args: Any) -> T:
        try:
            return await self._run(func, *args)
        except (SecurityError, StorageError):
            raise
        except (S3Error, ServerError, InvalidResponseError, urllib3.exceptions.HTTPError) as exc:
            raise self._error(exc, op, key) from exc
        except (OSError, ValueError) as exc:
            raise self._error(exc, op, key) from exc

    # ---------------------------------------------------------------- reads
    async def load_into(self, key: str, out: memoryview, *, prefix: bool = False) -> memoryview:
        """Read the object into ``out`` (at least its size, which is also the size limit):
        the ranged GETs land in the caller's buffer, no buffer of this backend's own in
        between; returns the filled ``out[:size]``. With ``prefix``, read only the object's
        first ``out.nbytes`` bytes (a shorter object is an error). Retried like :meth:`load`."""
        check_key(key)
        data = await self._call(
            "load", key, lambda: self._load_once(key, out.nbytes, out, prefix=prefix)
        )
        self.counters.incr(STORAGE_BYTES_READ, len(data))
        return memoryview(data)

    async def _load_once(
        self,
        key: str,
        max_size_bytes: int | None,
        out: memoryview | None = None,
        *,
        prefix: bool = False,
    ) -> Any:
        name = self.object_name(key)
        data, filled, etag = await self._guarded(
            "load", key, self._read_first, name, key, max_size_bytes, out, prefix
        )
        ranges = [
            (offset, min(self.range_size_bytes, len(data) - offset))
            for offset in range(filled, len(data), self.range_size_bytes)
        ]
        if ranges:
            view = memoryview(data)
            reads = [
                self._guarded("load", key, self._read_range, name, view, offset, length, etag)
                for offset, length in ranges
            ]
            results = await asyncio.gather(*reads, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        return data

    def _read_first(
        self,
        name: str,
        key: str,
        max_size_bytes: int | None,
        out: memoryview | None = None,
        prefix: bool = False,
    ) -> tuple[Any, int, str | None]:
        """GET the first range; allocate the whole buffer from ``Content-Range`` (or take
        ``out[:size]``). With ``prefix``, the object's first ``max_size_bytes`` only."""
        first = self.range_size_bytes
        if prefix:
            assert max_size_bytes is not None and max_size_bytes > 0
            first = min(first, max_size_bytes)
        try:
            response = self.client.get_object(self.bucket_name, name, offset=0, length=first)
        except S3Error as exc:
            if exc.code == "InvalidRange":  # only an empty object has no byte 0
                return (bytearray() if out is None else out[:0]), 0, None
            raise
        try:
            content_range = response.headers.get("Content-Range")
            length = int(response.headers.get("Content-Length", "-1"))
            if response.status == 206 and content_range and "/" in content_range:
                total = int(content_range.rpartition("/")[2])
            elif response.status == 200 and length >= 0:  # the server ignored the Range
                total = length
            else:
                raise StorageError(
                    f"S3 answered a ranged GET of {name!r} with status {response.status} "
                    f"and Content-Range {content_range!r}"
                )
            total = size_to_read(key, self.describe(), total, max_size_bytes, prefix=prefix)
            data: Any = bytearray(total) if out is None else out[:total]
            self._fill(response, memoryview(data)[:length], name)
            etag = response.headers.get("ETag")
            return data, length, etag
        finally:
            response.close()
            response.release_conn()

    def _read_range(
        self, name: str, view: memoryview, offset: int, length: int, etag: str | None
    ) -> None:
        headers: DictType | None = {"If-Match": etag} if etag else None
        response = self.client.get_object(
            self.bucket_name, name, offset=offset, length=length, request_headers=headers
        )
        try:
            self._fill(response, view[offset : offset + length], name)
        finally:
            response.close()
            response.release_conn()

    @staticmethod
    def _fill(response: urllib3.BaseHTTPResponse, target: memoryview, name: str) -> None:
        got = 0
        while got < len(target):
            n = response.readinto(target[got : got + _READ_BLOCK_BYTES])
            if not n:
                raise StorageError(
                    f"S3 response for {name!r} ended after {got} of {len(target)} bytes"
                )
            got += n

    async def _exists_once(self, key: str) -> bool:
        try:
            name = self.object_name(key)
            await self._guarded("exists", key, self.client.stat_object, self.bucket_name, name)
        except ChunkNotFoundError:
            return False
        return True

    async def _list_once(self, prefix: str) -> list[str]:
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        names = await self._guarded("list", prefix or ".", self._list_names, full)
        strip = len(self.prefix) + 1 if self.prefix else 0
        return sorted(n[strip:] for n in names if not n.endswith("/"))

    def _list_names(self, full_prefix: str) -> list[str]:
        return [
            obj.object_name
            for obj in self.client.list_objects(
                self.bucket_name, prefix=full_prefix, recursive=True
            )
            if obj.object_name is not None
        ]

    # ---------------------------------------------------------------- writes
    async def ensure_bucket(self) -> bool:
        """Create the bucket unless it exists; True when it was created."""

        def create() -> bool:
            if self.client.bucket_exists(self.bucket_name):
                return False
            self.client.make_bucket(self.bucket_name, location=self.region or None)
            return True

        return await self._guarded("create bucket", self.bucket_name, create)

    async def _save_once(self, key: str, data: Payload) -> None:
        name = self.object_name(key)
        await self._guarded("save", key, self._put, name, data)

    async def save_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Upload the file at ``path`` under ``key`` (streamed from disk in parts, never
        whole in memory), with the same retries as :meth:`save`."""
        check_key(key)
        name = self.object_name(key)

        def put() -> None:
            self.client.fput_object(
                self.bucket_name, name, os.fspath(path), num_parallel_uploads=_UPLOAD_PARTS
            )

        await self._call("save", key, lambda: self._guarded("save", key, put))

    def _put(self, name: str, data: Payload) -> None:
        self.client.put_object(
            self.bucket_name, name, io.BytesIO(data), len(data), num_parallel_uploads=_UPLOAD_PARTS
        )

    async def _delete_once(self, key: str) -> None:
        name = self.object_name(key)
        await self._guarded("delete", key, self.client.remove_object, self.bucket_name, name)

"""S3Backend against moto's real S3 HTTP server through the minio SDK."""

from __future__ import annotations

import io
import socket
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import urllib3

from sw_core.counters import STORAGE_BYTES_READ, STORAGE_RETRIES
from sw_core.exceptions import SecurityError, StorageError, is_transient
from sw_core.retry import RetryPolicy
from sw_core.storage import S3Backend

RANGE_BYTES = 64 << 10


def make_backend(s3_server, bucket: str, **kwargs: object) -> S3Backend:
    options: dict[str, object] = {
        "endpoint": s3_server.endpoint,
        "access_key": s3_server.access_key,
        "secret_key": s3_server.secret_key,
        "region": s3_server.region,
        "range_size_bytes": RANGE_BYTES,
        "timeout_s": 10,
    }
    options.update(kwargs)
    return S3Backend(bucket, **options)  # type: ignore[arg-type]


@pytest.fixture
async def s3(s3_server, s3_bucket) -> AsyncIterator[S3Backend]:
    backend = make_backend(s3_server, s3_bucket, prefix="p")
    yield backend
    await backend.close()


class GetSpy:
    """Wraps ``client.get_object``: records (offset, length) and can fail the first calls."""

    def __init__(self, backend: S3Backend, *, failures: int = 0) -> None:
        self.real = backend.client.get_object
        self.calls: list[tuple[int, int]] = []
        self.failures = failures
        backend.client.get_object = self  # type: ignore[method-assign]

    def __call__(self, bucket: str, name: str, offset: int = 0, length: int = 0, **kw: object):
        self.calls.append((offset, length))
        if len(self.calls) <= self.failures:
            raise urllib3.exceptions.ProtocolError(
                "Connection aborted.", ConnectionResetError(104, "Connection reset by peer")
            )
        return self.real(bucket, name, offset=offset, length=length, **kw)


async def test_large_object_is_read_with_concurrent_ranges(s3: S3Backend) -> None:
    payload = bytes(range(256)) * (3 * RANGE_BYTES // 256) + b"rest"
    await s3.save("big", payload)
    spy = GetSpy(s3)

    assert await s3.load("big") == payload

    offsets = sorted(spy.calls)
    assert offsets == [
        (0, RANGE_BYTES),
        (RANGE_BYTES, RANGE_BYTES),
        (2 * RANGE_BYTES, RANGE_BYTES),
        (3 * RANGE_BYTES, 4),
    ]
    assert s3.counters.get(STORAGE_BYTES_READ) == len(payload)


async def test_small_object_costs_one_request(s3: S3Backend) -> None:
    await s3.save("small", b"tiny")
    spy = GetSpy(s3)
    assert await s3.load("small") == b"tiny"
    assert spy.calls == [(0, RANGE_BYTES)]


async def test_objects_over_5_mib_round_trip_as_multipart(s3_server, s3_bucket) -> None:
    backend = make_backend(s3_server, s3_bucket, range_size_bytes=1 << 20)
    payload = bytes(range(256)) * ((6 << 20) // 256)
    await backend.save("multi", payload)
    etag = s3_server.client().stat_object(s3_bucket, "multi").etag
    assert "-" in etag  # a multipart ETag: not an MD5, hence our own sha256
    assert await backend.load("multi") == payload
    await backend.close()


async def test_failing_twice_then_recovering_follows_the_backoff(s3_server, s3_bucket) -> None:
    delays: list[float] = []

    async def record(delay_s: float) -> None:
        delays.append(delay_s)

    policy = RetryPolicy(attempts=3, initial_delay_s=0.25, multiplier=4.0, jitter=0.2)
    backend = make_backend(s3_server, s3_bucket, retry=policy, sleep=record)
    await backend.save("k", b"payload")
    spy = GetSpy(backend, failures=2)

    assert await backend.load("k") == b"payload"

    assert len(spy.calls) == 3
    assert backend.counters.get(STORAGE_RETRIES) == 2
    assert len(delays) == 2
    assert 0.25 * 0.8 <= delays[0] <= 0.25 * 1.2
    assert 1.0 * 0.8 <= delays[1] <= 1.0 * 1.2
    await backend.close()


async def test_object_replaced_during_a_ranged_read_is_retried(s3_server, s3_bucket) -> None:
    backend = make_backend(s3_server, s3_bucket, retry=RetryPolicy(attempts=2, initial_delay_s=0))
    old = b"a" * (2 * RANGE_BYTES)
    new = b"b" * (2 * RANGE_BYTES)
    await backend.save("k", old)
    real = backend.client.get_object
    replaced = []

    def replace_after_first_range(bucket: str, name: str, **kw: object):
        response = real(bucket, name, **kw)
        if not replaced:
            replaced.append(True)
            s3_server.client().put_object(bucket, name, io.BytesIO(new), len(new))
        return response

    backend.client.get_object = replace_after_first_range  # type: ignore[method-assign]
    data = await backend.load("k")
    assert data == new  # never a mix of the two versions
    assert backend.counters.get(STORAGE_RETRIES) == 1
    await backend.close()


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP port that accepts connections (backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


async def test_hanging_server_times_out_in_about_timeout_s(silent_server: str) -> None:
    backend = S3Backend(
        "bucket", endpoint=silent_server, timeout_s=0.5, retry=RetryPolicy(attempts=1)
    )
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        await backend.load("k")
    elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 1.5
    assert is_transient(info.value)
    await backend.close()


async def test_refused_connection_is_retried_then_transient(unused_tcp_port: int) -> None:
    backend = S3Backend(
        "bucket",
        endpoint=f"127.0.0.1:{unused_tcp_port}",
        retry=RetryPolicy(attempts=3, initial_delay_s=0.01),
    )
    with pytest.raises(StorageError, match="cannot reach S3") as info:
        await backend.load("k")
    assert is_transient(info.value)
    assert backend.counters.get(STORAGE_RETRIES) == 2
    await backend.close()


async def test_load_into_puts_the_ranges_in_the_callers_buffer(s3: S3Backend) -> None:
    payload = bytes(range(256)) * (5 * RANGE_BYTES // 256) + b"tail"
    await s3.save("chunk.bin", payload)
    spy = GetSpy(s3)
    out = memoryview(bytearray(len(payload) + 10))
    got = await s3.load_into("chunk.bin", out)
    assert bytes(got) == payload and got.obj is out.obj  # the caller's memory, no copy
    assert len(spy.calls) == 6
    assert s3.counters.get(STORAGE_BYTES_READ) == len(payload)
    with pytest.raises(SecurityError, match="over the limit"):
        await s3.load_into("chunk.bin", memoryview(bytearray(len(payload) - 1)))


async def test_a_prefix_read_takes_only_the_first_bytes_in_ranges(s3: S3Backend) -> None:
    payload = bytes(range(256)) * (5 * RANGE_BYTES // 256) + b"tail"
    await s3.save("chunk.bin", payload)
    spy = GetSpy(s3)
    size = 2 * RANGE_BYTES + 100
    out = memoryview(bytearray(size))
    got = await s3.load_into("chunk.bin", out, prefix=True)
    assert bytes(got) == payload[:size] and got.obj is out.obj
    assert sorted(spy.calls) == [
        (0, RANGE_BYTES),
        (RANGE_BYTES, RANGE_BYTES),
        (2 * RANGE_BYTES, 100),
    ]
    small = await s3.load_into("chunk.bin", memoryview(bytearray(10)), prefix=True)
    assert bytes(small) == payload[:10]
    with pytest.raises(SecurityError, match="shorter than"):
        await s3.load_into("chunk.bin", memoryview(bytearray(len(payload) + 1)), prefix=True)

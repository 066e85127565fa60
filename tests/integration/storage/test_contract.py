"""One contract, every backend: a real folder, S3 through minio against moto, and memory."""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sw_core.counters import INTEGRITY_FAILURES, STORAGE_BYTES_READ, STORAGE_RETRIES
from sw_core.exceptions import ChunkNotFoundError, SecurityError
from sw_core.retry import RetryPolicy
from sw_core.storage import FilesystemBackend, MemoryBackend, S3Backend, StorageBackend
from sw_core.utils import calculate_chunk_hash

#: Small ranges so that "large" objects need several ranged GETs.
RANGE_BYTES = 64 << 10
#: A retry would sleep this long, so any retry of a missing object shows in the elapsed time.
SLOW_RETRY = RetryPolicy(attempts=3, initial_delay_s=2.0, jitter=0)


@pytest.fixture(params=["filesystem", "s3", "memory"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StorageBackend]:
    if request.param == "filesystem":
        store: StorageBackend = FilesystemBackend(tmp_path / "store", retry=SLOW_RETRY)
        (tmp_path / "store").mkdir()
    elif request.param == "s3":
        server = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("s3_bucket")
        # Something outside the prefix that must stay invisible.
        server.client().put_object(bucket, "elsewhere/x", io.BytesIO(b"x"), 1)
        store = S3Backend(
            bucket,
            endpoint=server.endpoint,
            access_key=server.access_key,
            secret_key=server.secret_key,
            region=server.region,
            prefix="models/tiny",
            range_size_bytes=RANGE_BYTES,
            concurrency=4,
            retry=SLOW_RETRY,
            timeout_s=10,
        )
    else:
        store = MemoryBackend(retry=SLOW_RETRY)
    yield store
    await store.close()


async def test_save_load_round_trip_gives_a_writable_bytearray(backend: StorageBackend) -> None:
    await backend.save("a/b.bin", b"hello")
    data = await backend.load("a/b.bin")
    assert data == b"hello"
    assert isinstance(data, bytearray)
    data[0] = ord("j")  # writable, so tensors can be built over it
    assert backend.counters.get(STORAGE_BYTES_READ) == 5


async def test_overwrite_replaces(backend: StorageBackend) -> None:
    await backend.save("k", b"first version")
    await backend.save("k", bytearray(b"second"))
    assert await backend.load("k") == b"second"


async def test_empty_object(backend: StorageBackend) -> None:
    await backend.save("empty", b"")
    assert await backend.load("empty") == b""
    assert await backend.exists("empty")


async def test_missing_raises_chunk_not_found_at_once(backend: StorageBackend) -> None:
    started = time.monotonic()
    with pytest.raises(ChunkNotFoundError):
        await backend.load("no/such.safetensors")
    with pytest.raises(ChunkNotFoundError):
        await backend.load_verified("no/such.safetensors", "0" * 64)
    assert time.monotonic() - started < 1.5  # a single retry would sleep 2 s
    assert backend.counters.get(STORAGE_RETRIES) == 0


async def test_exists(backend: StorageBackend) -> None:
    assert not await backend.exists("k")
    await backend.save("k", b"1")
    assert await backend.exists("k")
    assert not await backend.exists("k2")


async def test_list_by_prefix_sorted_and_relative(backend: StorageBackend) -> None:
    for key in ("manifest.json", "blocks/b1", "blocks/b0", "blocksmith", "z/deep/er/file"):
        await backend.save(key, b"x")
    assert await backend.list() == [
        "blocks/b0",
        "blocks/b1",
        "blocksmith",
        "manifest.json",
        "z/deep/er/file",
    ]
    assert await backend.list("blocks/") == ["blocks/b0", "blocks/b1"]
    assert await backend.list("blocks") == ["blocks/b0", "blocks/b1", "blocksmith"]
    assert await backend.list("z/deep/e") == ["z/deep/er/file"]
    assert await backend.list("nothing/") == []


async def test_delete(backend: StorageBackend) -> None:
    await backend.save("k", b"1")
    await backend.delete("k")
    assert not await backend.exists("k")
    with pytest.raises(ChunkNotFoundError):
        await backend.load("k")
    await backend.delete("k")  # deleting a missing key is fine


async def test_large_object_spanning_many_ranges(backend: StorageBackend) -> None:
    payload = bytes(range(256)) * ((5 * RANGE_BYTES) // 256) + b"tail!"  # 5 ranges + 5 bytes
    await backend.save("big.safetensors", payload)
    data = await backend.load_verified("big.safetensors", calculate_chunk_hash(payload))
    assert data == payload


async def test_exactly_one_range(backend: StorageBackend) -> None:
    payload = b"\x01" * RANGE_BYTES
    await backend.save("one", payload)
    assert await backend.load("one") == payload


async def test_load_verified_refuses_a_corrupt_copy(backend: StorageBackend) -> None:
    await backend.save("c", b"corrupted!")
    with pytest.raises(SecurityError, match="corrupt"):
        await backend.load_verified("c", calculate_chunk_hash(b"original!!"))
    assert backend.counters.get(INTEGRITY_FAILURES) == 1


async def test_size_limit(backend: StorageBackend) -> None:
    await backend.save("c", b"x" * (2 * RANGE_BYTES))
    with pytest.raises(SecurityError, match="over the limit"):
        await backend.load("c", max_size_bytes=RANGE_BYTES)


@pytest.mark.parametrize("key", ["../escape", "/abs", "a/../../b"])
async def test_unsafe_keys_are_refused(backend: StorageBackend, key: str) -> None:
    with pytest.raises(SecurityError):
        await backend.save(key, b"x")
    with pytest.raises(SecurityError):
        await backend.load(key)


async def test_listing_a_missing_store_is_chunk_not_found(tmp_path: Path, s3_server) -> None:
    with pytest.raises(ChunkNotFoundError):
        await FilesystemBackend(tmp_path / "absent").list()
    s3 = S3Backend(
        "no-such-bucket-here",
        endpoint=s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
    )
    with pytest.raises(ChunkNotFoundError, match="no-such-bucket-here"):
        await s3.list()
    with pytest.raises(ChunkNotFoundError, match="bucket does not exist"):
        await s3.load("k")
    await s3.close()

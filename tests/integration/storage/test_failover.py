"""FailoverBackend([S3Backend, FilesystemBackend]) with real servers and real folders."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from sw_core.counters import INTEGRITY_FAILURES, STORAGE_FAILOVERS, STORAGE_RETRIES, Counters
from sw_core.exceptions import ChunkNotFoundError
from sw_core.retry import RetryPolicy
from sw_core.settings import Settings
from sw_core.storage import FailoverBackend, FilesystemBackend, S3Backend, model_store
from sw_core.utils import calculate_chunk_hash
from tests.support.servers import S3Server

GOOD = bytes(range(256)) * 1024 + b"chunk"
SHA = calculate_chunk_hash(GOOD)
KEY = "block_000.safetensors"
FAST_RETRY = RetryPolicy(attempts=3, initial_delay_s=0.01, multiplier=2.0, jitter=0)


def chain(server: S3Server, bucket: str, folder: Path, retry: RetryPolicy) -> FailoverBackend:
    counters = Counters()
    s3 = S3Backend(
        bucket,
        endpoint=server.endpoint,
        access_key=server.access_key,
        secret_key=server.secret_key,
        region=server.region,
        prefix="tiny",
        range_size_bytes=64 << 10,
        counters=counters,
        retry=retry,
        timeout_s=5,
    )
    backup = FilesystemBackend(folder, counters=counters, retry=retry, timeout_s=5)
    return FailoverBackend([s3, backup], counters=counters)


def put(server: S3Server, bucket: str, key: str, data: bytes) -> None:
    server.client().put_object(bucket, f"tiny/{key}", io.BytesIO(data), len(data))


async def test_corrupt_s3_copy_is_served_from_the_folder_and_repaired(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    corrupt = bytearray(GOOD)
    corrupt[1000] ^= 0x01
    put(s3_server, s3_bucket, KEY, bytes(corrupt))
    (tmp_path / KEY).write_bytes(GOOD)
    store = chain(s3_server, s3_bucket, tmp_path, FAST_RETRY)

    data = await store.load_verified(KEY, SHA)

    assert data == GOOD
    assert store.counters.get(INTEGRITY_FAILURES) == 1
    response = s3_server.client().get_object(s3_bucket, f"tiny/{KEY}")
    assert response.read() == GOOD  # the good copy was written back to S3
    response.release_conn()
    await store.close()


async def test_stopped_s3_server_fails_over_to_the_folder(tmp_path: Path) -> None:
    server = S3Server().start()  # our own server: the session's one stays up
    try:
        server.client().make_bucket("doomed")
        put(server, "doomed", KEY, GOOD)
        (tmp_path / KEY).write_bytes(GOOD)
        store = chain(server, "doomed", tmp_path, FAST_RETRY)
        assert await store.load_verified(KEY, SHA) == GOOD
        assert store.counters.get(STORAGE_FAILOVERS) == 0  # S3 served it
    finally:
        server.stop()

    started = time.monotonic()
    data = await store.load_verified(KEY, SHA)
    elapsed = time.monotonic() - started

    assert data == GOOD
    assert store.counters.get(STORAGE_FAILOVERS) == 1
    assert store.counters.get(STORAGE_RETRIES) == FAST_RETRY.attempts - 1
    assert elapsed < 2.0
    await store.close()


async def test_object_in_neither_is_not_found_at_once(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    slow_retry = RetryPolicy(attempts=3, initial_delay_s=2.0, jitter=0)
    store = chain(s3_server, s3_bucket, tmp_path, slow_retry)
    started = time.monotonic()

    with pytest.raises(ChunkNotFoundError) as info:
        await store.load_verified(KEY, SHA)

    assert time.monotonic() - started < 1.0  # one retry would sleep 2 s
    assert store.counters.get(STORAGE_RETRIES) == 0
    assert store.counters.get(STORAGE_FAILOVERS) == 0
    assert s3_bucket in str(info.value) and str(tmp_path) in str(info.value)
    await store.close()


async def test_model_store_from_settings_reads_the_backup_when_s3_lacks_it(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    settings = Settings.from_env(
        {},
        s3_endpoint=s3_server.endpoint,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
        backup_dir=str(tmp_path),
        retry_initial_delay_s=0.01,
    )
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / KEY).write_bytes(GOOD)
    store = model_store(f"s3://{s3_bucket}/models/tiny", settings)

    assert await store.load_verified(KEY, SHA) == GOOD
    await store.save("new.bin", b"both")
    assert (tmp_path / "tiny" / "new.bin").read_bytes() == b"both"
    assert s3_server.client().stat_object(s3_bucket, "models/tiny/new.bin").size == 4
    await store.close()

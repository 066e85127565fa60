"""Retries, timeouts and counters of RetryingBackend, on a fault-injecting MemoryBackend."""

from __future__ import annotations

import asyncio
import time

import pytest

from sw_core.counters import INTEGRITY_FAILURES, STORAGE_BYTES_READ, STORAGE_RETRIES
from sw_core.exceptions import (
    ChunkNotFoundError,
    ConfigError,
    SecurityError,
    StorageError,
    is_transient,
)
from sw_core.retry import RetryPolicy
from sw_core.storage import FilesystemBackend, MemoryBackend, PermanentStorageError
from sw_core.utils import calculate_chunk_hash


class FlakyBackend(MemoryBackend):
    """Fails the first ``failures`` loads with ``error``; may hang instead."""

    def __init__(
        self,
        *,
        failures: int = 0,
        error: Exception | None = None,
        hang_s: float = 0,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.failures = failures
        self.error = error or ConnectionResetError("connection reset by peer")
        self.hang_s = hang_s
        self.attempts = 0

    async def _load_once(self, key: str, max_size_bytes: int | None) -> bytearray:
        self.attempts += 1
        if self.hang_s:
            await asyncio.sleep(self.hang_s)
        if self.attempts <= self.failures:
            raise self.error
        return await super()._load_once(key, max_size_bytes)


class SleepRecorder:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay_s: float) -> None:
        self.delays.append(delay_s)


POLICY = RetryPolicy(attempts=4, initial_delay_s=0.5, multiplier=3.0, max_delay_s=60, jitter=0.1)


async def test_transient_failures_retry_with_configured_backoff() -> None:
    sleep = SleepRecorder()
    backend = FlakyBackend(failures=2, retry=POLICY, sleep=sleep, objects={"k": b"payload"})

    data = await backend.load("k")

    assert data == b"payload" and isinstance(data, bytearray)
    assert backend.attempts == 3
    assert backend.counters.get(STORAGE_RETRIES) == 2
    assert len(sleep.delays) == 2
    for attempt, delay in enumerate(sleep.delays, start=1):
        base = POLICY.base_delay_s(attempt)  # 0.5, then 1.5
        assert base * 0.9 <= delay <= base * 1.1
    assert sleep.delays[1] > sleep.delays[0] * 2


async def test_transient_failure_outlives_retries_as_transient_storage_error() -> None:
    sleep = SleepRecorder()
    backend = FlakyBackend(failures=99, retry=POLICY, sleep=sleep, objects={"k": b"x"})

    with pytest.raises(StorageError) as info:
        await backend.load("k")

    assert is_transient(info.value)
    assert "connection reset" in str(info.value)
    assert backend.attempts == POLICY.attempts
    assert backend.counters.get(STORAGE_RETRIES) == POLICY.attempts - 1


async def test_missing_object_is_not_retried() -> None:
    sleep = SleepRecorder()
    backend = MemoryBackend(retry=POLICY, sleep=sleep)

    with pytest.raises(ChunkNotFoundError):
        await backend.load("nope")

    assert sleep.delays == []
    assert backend.counters.get(STORAGE_RETRIES) == 0


async def test_permanent_error_is_not_retried() -> None:
    sleep = SleepRecorder()
    backend = FlakyBackend(
        failures=5, error=PermanentStorageError("access denied"), retry=POLICY, sleep=sleep
    )

    with pytest.raises(PermanentStorageError):
        await backend.load("k")

    assert backend.attempts == 1 and sleep.delays == []


async def test_hanging_call_times_out_as_transient_storage_error() -> None:
    backend = FlakyBackend(
        hang_s=5, timeout_s=0.2, retry=RetryPolicy(attempts=1), objects={"k": b"x"}
    )
    started = time.monotonic()

    with pytest.raises(StorageError) as info:
        await backend.load("k")

    elapsed = time.monotonic() - started
    assert 0.15 <= elapsed < 1.0
    assert is_transient(info.value)
    assert "timed out after 0.2 s" in str(info.value)


async def test_hanging_filesystem_read_times_out(tmp_path, monkeypatch) -> None:
    backend = FilesystemBackend(tmp_path, timeout_s=0.2, retry=RetryPolicy(attempts=1))
    (tmp_path / "k").write_bytes(b"x")

    def stuck_read(*_args: object) -> bytearray:
        time.sleep(0.6)  # a hung NFS read, say
        return bytearray(b"late")

    monkeypatch.setattr(backend, "_read", stuck_read)
    started = time.monotonic()
    with pytest.raises(StorageError, match="timed out") as info:
        await backend.load("k")
    assert time.monotonic() - started < 0.5
    assert is_transient(info.value)


async def test_timeout_applies_per_attempt_and_is_retried() -> None:
    sleep = SleepRecorder()
    backend = FlakyBackend(
        hang_s=5, timeout_s=0.1, retry=RetryPolicy(attempts=2, jitter=0), sleep=sleep
    )

    with pytest.raises(StorageError):
        await backend.load("k")

    assert backend.attempts == 2
    assert backend.counters.get(STORAGE_RETRIES) == 1
    assert sleep.delays == [1.0]


async def test_bytes_read_and_integrity_failures_are_counted() -> None:
    backend = MemoryBackend({"a": b"12345", "b": b"xyz"})
    good = calculate_chunk_hash(b"12345")

    assert await backend.load_verified("a", good) == b"12345"
    with pytest.raises(SecurityError, match="corrupt"):
        await backend.load_verified("b", good)

    assert backend.counters.get(STORAGE_BYTES_READ) == 8
    assert backend.counters.get(INTEGRITY_FAILURES) == 1


async def test_size_limit_refuses_large_objects() -> None:
    backend = MemoryBackend({"big": b"x" * 100})

    with pytest.raises(SecurityError, match="over the limit"):
        await backend.load("big", max_size_bytes=99)
    assert await backend.load("big", max_size_bytes=100) == b"x" * 100


def test_non_positive_timeout_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        MemoryBackend(timeout_s=0)

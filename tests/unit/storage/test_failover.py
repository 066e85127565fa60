"""FailoverBackend's walk down the chain, on in-memory backends."""

from __future__ import annotations

import pytest

from sw_core.counters import INTEGRITY_FAILURES, STORAGE_FAILOVERS, Counters
from sw_core.exceptions import ChunkNotFoundError, SecurityError, StorageError, is_transient
from sw_core.retry import RetryPolicy
from sw_core.storage import FailoverBackend, MemoryBackend, PermanentStorageError
from sw_core.utils import calculate_chunk_hash

GOOD = b"good chunk bytes"
SHA = calculate_chunk_hash(GOOD)
NO_RETRY = RetryPolicy(attempts=1)


class BrokenBackend(MemoryBackend):
    """Every call fails with ``error``."""

    def __init__(self, error: Exception, **kwargs: object) -> None:
        super().__init__(retry=NO_RETRY, **kwargs)  # type: ignore[arg-type]
        self.error = error

    async def _load_once(self, key: str, max_size_bytes: int | None) -> bytearray:
        raise self.error

    async def _save_once(self, key: str, data: object) -> None:
        raise self.error

    async def _exists_once(self, key: str) -> bool:
        raise self.error

    async def _list_once(self, prefix: str) -> list[str]:
        raise self.error


def chain(*members: MemoryBackend, repair: bool = True) -> tuple[FailoverBackend, Counters]:
    counters = Counters()
    for member in members:
        member.counters = counters
    return FailoverBackend(list(members), repair=repair), counters


async def test_corrupt_primary_copy_is_skipped_counted_and_repaired() -> None:
    primary = MemoryBackend({"c": b"bad chunk bytes!"}, label="primary")
    backup = MemoryBackend({"c": GOOD}, label="backup")
    store, counters = chain(primary, backup)

    assert await store.load_verified("c", SHA) == GOOD

    assert counters.get(INTEGRITY_FAILURES) == 1
    assert counters.get(STORAGE_FAILOVERS) == 0
    assert primary.objects["c"] == GOOD  # repaired with the verified copy


async def test_no_repair_when_disabled() -> None:
    primary = MemoryBackend({"c": b"bad"}, label="primary")
    store, _ = chain(primary, MemoryBackend({"c": GOOD}), repair=False)
    assert await store.load_verified("c", SHA) == GOOD
    assert primary.objects["c"] == b"bad"


async def test_failed_primary_fails_over_and_counts() -> None:
    primary = BrokenBackend(StorageError("connection refused"), label="s3")
    store, counters = chain(primary, MemoryBackend({"c": GOOD}, label="folder"))

    assert await store.load("c") == GOOD
    assert await store.load_verified("c", SHA) == GOOD
    assert counters.get(STORAGE_FAILOVERS) == 2


async def test_missing_in_primary_is_not_a_failover() -> None:
    store, counters = chain(MemoryBackend(label="s3"), MemoryBackend({"c": GOOD}))
    assert await store.load_verified("c", SHA) == GOOD
    assert counters.get(STORAGE_FAILOVERS) == 0


async def test_missing_everywhere_is_chunk_not_found() -> None:
    store, _ = chain(MemoryBackend(label="a"), MemoryBackend(label="b"))
    with pytest.raises(ChunkNotFoundError, match="memory:a: missing; memory:b: missing"):
        await store.load_verified("c", SHA)


async def test_only_corrupt_copies_is_a_security_error() -> None:
    store, counters = chain(MemoryBackend({"c": b"bad1"}), MemoryBackend(label="b"))
    with pytest.raises(SecurityError, match="only corrupt copies"):
        await store.load_verified("c", SHA)
    assert counters.get(INTEGRITY_FAILURES) == 1


async def test_failures_name_every_backend() -> None:
    store, _ = chain(
        BrokenBackend(StorageError("connection refused"), label="s3"),
        MemoryBackend({"c": b"bad"}, label="folder"),
    )
    with pytest.raises(StorageError) as info:
        await store.load_verified("c", SHA)
    message = str(info.value)
    assert "memory:s3" in message and "connection refused" in message
    assert "memory:folder: corrupt copy" in message
    assert is_transient(info.value)


async def test_permanent_failures_everywhere_stay_permanent() -> None:
    store, _ = chain(
        BrokenBackend(PermanentStorageError("access denied"), label="a"),
        BrokenBackend(PermanentStorageError("read-only"), label="b"),
    )
    with pytest.raises(PermanentStorageError):
        await store.load("c")


async def test_bugs_are_not_swallowed() -> None:
    store, _ = chain(BrokenBackend(KeyError("bug")), MemoryBackend({"c": GOOD}))
    with pytest.raises(KeyError):
        await store.load("c")


async def test_save_writes_everywhere_and_backup_failure_is_tolerated() -> None:
    primary, backup = MemoryBackend(label="p"), MemoryBackend(label="b")
    store, _ = chain(primary, backup)
    await store.save("c", GOOD)
    assert primary.objects["c"] == backup.objects["c"] == GOOD

    broken_backup = BrokenBackend(StorageError("disk full"), label="b")
    store, counters = chain(MemoryBackend(label="p"), broken_backup)
    await store.save("c", GOOD)
    assert counters.get("errors:StorageError") == 1


async def test_save_raises_when_primary_fails() -> None:
    backup = MemoryBackend(label="b")
    store, _ = chain(BrokenBackend(StorageError("down"), label="p"), backup)
    with pytest.raises(StorageError, match="down"):
        await store.save("c", GOOD)


async def test_exists_and_list_are_unions_of_healthy_backends() -> None:
    store, _ = chain(
        MemoryBackend({"a": b"1", "x/b": b"2"}),
        MemoryBackend({"x/c": b"3"}),
        BrokenBackend(StorageError("down")),
    )
    assert await store.exists("x/c")
    assert not await store.exists("nope")
    assert await store.list() == ["a", "x/b", "x/c"]
    assert await store.list("x/") == ["x/b", "x/c"]

    dead, _ = chain(BrokenBackend(StorageError("down")), BrokenBackend(StorageError("down")))
    with pytest.raises(StorageError):
        await dead.list()
    with pytest.raises(StorageError):
        await dead.exists("a")


async def test_unsafe_key_is_refused_before_any_backend() -> None:
    store, _ = chain(MemoryBackend({"../x": GOOD}))
    with pytest.raises(SecurityError):
        await store.load("../x")

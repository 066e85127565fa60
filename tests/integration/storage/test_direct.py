"""Chunk reads past the page cache (``O_DIRECT``) from a real folder: right bytes, straight
into the engine's aligned buffer, nothing left in the page cache; buffered reads otherwise."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import blake3
import pytest

from sw_core.counters import INTEGRITY_FAILURES
from sw_core.engine import StoreChunkSource, StreamingEngine
from sw_core.engine.memory.buffers import BufferPool
from sw_core.exceptions import SecurityError
from sw_core.settings import Settings
from sw_core.storage import FilesystemBackend
from sw_core.storage.direct import ALIGN, is_aligned, wants_direct
from sw_core.storage.failover import FailoverBackend
from tests.support.models import tiny_engine_model
from tests.support.pagecache import cached_pages

MIB = 1 << 20


def drop_pages(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def written(folder: Path, name: str, size: int) -> bytes:
    data = os.urandom(size)
    (folder / name).write_bytes(data)
    drop_pages(folder / name)  # start cold: drop what writing cached
    return data


@pytest.mark.parametrize("size", [5 * MIB + 123, 3 * ALIGN, 100, 70 * MIB + 1])
async def test_a_direct_read_lands_in_the_buffer_and_not_in_the_page_cache(
    tmp_path: Path, size: int
) -> None:
    data = written(tmp_path, "chunk.bin", size)
    store = FilesystemBackend(tmp_path, direct_io=True)
    out = BufferPool(256 * MIB).take(size)
    assert is_aligned(out)
    got = await store.load_into("chunk.bin", out)
    assert bytes(got) == data and store.direct_reads == 1
    assert cached_pages(tmp_path / "chunk.bin")[0] == 0


async def test_buffered_reads_fill_the_page_cache_unless_told_not_to(tmp_path: Path) -> None:
    data = written(tmp_path, "chunk.bin", 4 * MIB)
    plain = FilesystemBackend(tmp_path)
    assert bytes(await plain.load_into("chunk.bin", BufferPool(8 * MIB).take(len(data)))) == data
    cached, pages = cached_pages(tmp_path / "chunk.bin")
    assert cached == pages and plain.direct_reads == 0
    # direct_io with a buffer that is not aligned: read buffered, then the pages dropped
    direct = FilesystemBackend(tmp_path, direct_io=True)
    unaligned = memoryview(bytearray(len(data) + 1))[1:]
    assert bytes(await direct.load_into("chunk.bin", unaligned)) == data
    assert direct.direct_reads == 0 and cached_pages(tmp_path / "chunk.bin")[0] == 0


def test_auto_reads_past_the_page_cache_only_what_memory_cannot_hold() -> None:
    assert wants_direct("auto", 13 << 30, memory=24 << 30) is True
    assert wants_direct("auto", 11 << 30, memory=24 << 30) is False
    assert wants_direct("on", 1, memory=24 << 30) and not wants_direct("off", 1 << 40)


async def test_sources_switch_every_folder_of_a_chain(tmp_path: Path) -> None:
    first, second = FilesystemBackend(tmp_path / "a"), FilesystemBackend(tmp_path / "b")
    source = StoreChunkSource(FailoverBackend([first, second]))
    assert source.configure_reads(1, "on") and first.direct_io and second.direct_io
    assert not source.configure_reads(1 << 40, "off") and not first.direct_io


async def test_the_engine_reads_a_model_past_the_page_cache_with_the_same_results(
    tmp_path: Path,
) -> None:
    manifest = tiny_engine_model(tmp_path, hidden=256)
    request = [{"input_ids": [5, 9, 11, 3], "output": "logits", "positions": "last"}]
    outputs = {}
    for mode in ("off", "on"):
        settings = Settings(memory_budget_mb=4, direct_io=mode)
        engine = await StreamingEngine.open(str(tmp_path), settings)
        try:
            outputs[mode] = await engine.run_async("forward", request)
            assert engine.direct_io is (mode == "on")
            store = engine.source.store
            assert (store.direct_reads > 0) is (mode == "on"), store.direct_reads
            if mode == "on":  # the streamed blocks left no pages behind
                for chunk in manifest.blocks():
                    assert cached_pages(tmp_path / chunk.file)[0] == 0, chunk.name
        finally:
            await engine.aclose()
        for chunk in manifest.chunks:  # the next run starts cold
            drop_pages(tmp_path / chunk.file)
    assert outputs["on"] == outputs["off"]


@pytest.mark.parametrize("direct_io", [True, False])
async def test_a_read_is_verified_as_it_lands(tmp_path: Path, direct_io: bool) -> None:
    data = written(tmp_path, "chunk.bin", 70 * MIB + 5)
    good = hashlib.sha256(data).hexdigest()
    store = FilesystemBackend(tmp_path, direct_io=direct_io)
    pool = BufferPool(256 * MIB)
    got = await store.load_verified_into("chunk.bin", pool.take(len(data)), good)
    assert bytes(got) == data and store.direct_reads == int(direct_io)
    blake = blake3.blake3(data).hexdigest()
    got = await store.load_verified_into("chunk.bin", pool.take(len(data)), "0" * 64, blake3=blake)
    assert bytes(got) == data
    with pytest.raises(SecurityError, match="corrupt: sha256"):
        await store.load_verified_into("chunk.bin", pool.take(len(data)), "0" * 64)
    with pytest.raises(SecurityError, match="corrupt: blake3"):  # hashed inline when buffered
        await store.load_verified_into("chunk.bin", pool.take(len(data)), good, blake3="0" * 64)
    assert store.counters.get(INTEGRITY_FAILURES) == 2


@pytest.mark.parametrize("direct_io", [True, False])
async def test_a_prefix_read_takes_and_checks_only_the_first_bytes(
    tmp_path: Path, direct_io: bool
) -> None:
    data = written(tmp_path, "chunk.bin", 3 * MIB + 77)
    size = 2 * MIB + 4099  # not a multiple of the direct-I/O block
    head = data[:size]
    store = FilesystemBackend(tmp_path, direct_io=direct_io)
    pool = BufferPool(16 * MIB)
    sha, blake = hashlib.sha256(head).hexdigest(), blake3.blake3(head).hexdigest()
    for digests in ({"sha256": sha}, {"sha256": "0" * 64, "blake3": blake}):
        got = await store.load_verified_into(
            "chunk.bin",
            pool.take(size),
            digests["sha256"],
            blake3=digests.get("blake3"),
            prefix=True,
        )
        assert bytes(got) == head
    with pytest.raises(SecurityError, match="corrupt"):  # the whole file's digest is not it
        await store.load_verified_into(
            "chunk.bin", pool.take(size), hashlib.sha256(data).hexdigest(), prefix=True
        )
    with pytest.raises(SecurityError, match="over the limit"):  # without prefix: too large
        await store.load_verified_into("chunk.bin", pool.take(size), sha)
    with pytest.raises(SecurityError, match="shorter than"):
        await store.load_verified_into("chunk.bin", pool.take(len(data) + 1), sha, prefix=True)

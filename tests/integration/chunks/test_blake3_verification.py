"""BLAKE3 verification: chunk sets record a BLAKE3 digest beside the sha256, and storage,
cache and engine reads check it; sha256-only chunk sets keep working; ``sw rehash`` upgrades
an old chunk set (and re-pins a pinned location)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from pathlib import Path

import pytest
import redis

from sw_core.cache import ChunkCache
from sw_core.chunks.chunk_set import ChunkSet
from sw_core.chunks.manifest import MANIFEST_FILE, Manifest
from sw_core.chunks.rehash import add_blake3
from sw_core.chunks.verify import verify_chunk_set
from sw_core.cli import main as sw_main
from sw_core.counters import INTEGRITY_FAILURES, Counters
from sw_core.engine import StreamingEngine
from sw_core.engine.io.sources import CachedChunkSource, StoreChunkSource
from sw_core.exceptions import SecurityError
from sw_core.hashing import Expected, hex_digest
from sw_core.keys import Keys
from sw_core.settings import Settings
from sw_core.storage import FailoverBackend, FilesystemBackend
from sw_core.storage.location import pin_location
from tests.support.models import chunk_small
from tests.support.storage import make_chunk_set

MIB = 1 << 20


def blob(size_bytes: int, seed: int) -> tuple[str, str, bytes]:
    data = random.Random(seed).randbytes(size_bytes)
    return hashlib.sha256(data).hexdigest(), hex_digest("blake3", data), data


def flipped(data: bytes, at: int = -17) -> bytes:
    out = bytearray(data)
    out[at] ^= 1
    return bytes(out)


@pytest.fixture
def client(redis_url: str):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def make_cache(client: redis.Redis) -> ChunkCache:
    return ChunkCache(
        client, keys=Keys("sw"), cache_size_bytes=64 * MIB, part_size_bytes=MIB, counters=Counters()
    )


# ------------------------------------------------------------------------- manifests
def test_expected_prefers_blake3_and_falls_back_to_sha256() -> None:
    assert Expected.of("AB" * 32, None) == Expected("sha256", "ab" * 32)
    assert Expected.of("ab" * 32, "CD" * 32) == Expected("blake3", "cd" * 32)


async def test_the_chunker_records_blake3_for_every_chunk_and_file(tmp_path: Path) -> None:
    _, manifest = chunk_small("gpt2", tmp_path)
    assert manifest.has_blake3
    for entry in [*manifest.chunks, *manifest.files]:
        data = (tmp_path / entry.file).read_bytes()
        assert entry.blake3 == hex_digest("blake3", data)
        assert entry.sha256 == hashlib.sha256(data).hexdigest()
    assert Manifest.load(tmp_path) == manifest  # the field survives the JSON round trip


def test_a_manifest_without_blake3_still_loads(tmp_path: Path) -> None:
    manifest = make_chunk_set(tmp_path)
    raw = json.loads((tmp_path / MANIFEST_FILE).read_text())
    for entry in raw["chunks"] + raw.get("files", []):
        entry.pop("blake3", None)  # as written before BLAKE3 existed
    loaded = Manifest.from_json(json.dumps(raw))
    assert loaded.chunks == manifest.chunks and not loaded.has_blake3


# ------------------------------------------------------------------------- storage
async def test_load_verified_checks_blake3_when_given(tmp_path: Path) -> None:
    sha, b3, data = blob(3 * MIB, seed=1)
    (tmp_path / "c.bin").write_bytes(data)
    store = FilesystemBackend(tmp_path)
    assert bytes(await store.load_verified("c.bin", sha, blake3=b3)) == data
    # the sha256 matches but the blake3 does not: blake3 is what is checked
    with pytest.raises(SecurityError, match="blake3"):
        await store.load_verified("c.bin", sha, blake3="0" * 64)
    (tmp_path / "c.bin").write_bytes(flipped(data))
    with pytest.raises(SecurityError, match="is corrupt: blake3"):
        await store.load_verified("c.bin", sha, blake3=b3)
    assert store.counters.get(INTEGRITY_FAILURES) == 2


async def test_failover_skips_and_repairs_a_copy_that_fails_blake3(tmp_path: Path) -> None:
    sha, b3, data = blob(2 * MIB, seed=2)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "c.bin").write_bytes(flipped(data))
    (tmp_path / "b" / "c.bin").write_bytes(data)
    chain = FailoverBackend([FilesystemBackend(tmp_path / "a"), FilesystemBackend(tmp_path / "b")])
    assert bytes(await chain.load_verified("c.bin", sha, blake3=b3)) == data
    assert (tmp_path / "a" / "c.bin").read_bytes() == data  # repaired
    (tmp_path / "a" / "c.bin").write_bytes(flipped(data))
    (tmp_path / "b" / "c.bin").write_bytes(flipped(data, at=5))
    with pytest.raises(SecurityError):
        await chain.load_verified("c.bin", sha, blake3=b3)


# ------------------------------------------------------------------------- cache
def test_cache_reads_verify_blake3_and_drop_tampered_entries(client: redis.Redis) -> None:
    cache = make_cache(client)
    for size in (200_000, 3 * MIB):  # inline and helper-thread hashing
        sha, b3, data = blob(size, seed=size)
        assert cache.put(sha, data, blake3=b3)
        assert bytes(cache.get(sha, blake3=b3)) == data
        # a reader whose manifest records another blake3 refuses the entry (and drops it)
        assert cache.get(sha, blake3="0" * 64) is None
        assert not cache.contains(sha)
        cache.put(sha, data, blake3=b3)
        part = Keys("sw").cache_part(sha, 0)
        byte = client.getrange(part, 10, 10)
        client.setrange(part, 10, bytes([byte[0] ^ 0xFF]))
        assert cache.get(sha, blake3=b3) is None
        assert not cache.contains(sha)
    assert cache.info().corruptions == 4


def test_cache_put_refuses_bytes_that_do_not_match_the_blake3(client: redis.Redis) -> None:
    cache = make_cache(client)
    sha, b3, data = blob(2 * MIB, seed=5)
    with pytest.raises(SecurityError, match="blake3"):
        cache.put(sha, flipped(data), blake3=b3)
    with pytest.raises(SecurityError, match="blake3"):
        cache.put(sha, data, blake3="1" * 64)
    assert not cache.contains(sha)


def test_cache_without_blake3_still_checks_the_id(client: redis.Redis) -> None:
    cache = make_cache(client)
    sha, _, data = blob(2 * MIB, seed=6)
    cache.put(sha, data)
    assert bytes(cache.get(sha)) == data
    part = Keys("sw").cache_part(sha, 1)
    client.setrange(part, 3, b"\x00\x01")
    assert cache.get(sha) is None


# ------------------------------------------------------------------------- engine
async def test_engine_sources_refuse_a_chunk_that_fails_blake3(
    tmp_path: Path, redis_url: str
) -> None:
    _, manifest = chunk_small("gpt2", tmp_path)
    block = manifest.chunk("transformer.h.0")
    good = (tmp_path / block.file).read_bytes()
    (tmp_path / block.file).write_bytes(flipped(good))
    with pytest.raises(SecurityError, match="blake3"):
        await StoreChunkSource(FilesystemBackend(tmp_path)).fetch(block)
    cache = ChunkCache.from_settings(Settings(redis_url=redis_url))
    try:
        source = CachedChunkSource(cache, FilesystemBackend(tmp_path))
        with pytest.raises(SecurityError, match="blake3"):
            await source.fetch(block)
        assert not cache.contains(block.sha256)
        (tmp_path / block.file).write_bytes(good)
        assert bytes(await source.fetch(block)) == good  # miss: stored, verified
        assert bytes(await source.fetch(block)) == good and source.cache_hits == 1
    finally:
        cache.close()


async def _forward(folder: Path, ids: list[int]) -> object:
    engine = await StreamingEngine.open(str(folder), memory_budget_mb=2048)
    try:
        (out,) = await engine.run_async("forward", [{"input_ids": ids}])
        return out
    finally:
        engine.close()


async def test_engine_runs_a_sha256_only_and_an_upgraded_chunk_set_alike(tmp_path: Path) -> None:
    chunk_small("gpt2", tmp_path)
    raw = json.loads((tmp_path / MANIFEST_FILE).read_text())
    for entry in raw["chunks"] + raw["files"]:
        entry.pop("blake3")
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(raw))
    ids = [5, 9, 2, 7, 1]
    before = await _forward(tmp_path, ids)
    async with await ChunkSet.open(str(tmp_path), Settings()) as chunk_set:
        assert not chunk_set.manifest.has_blake3
        upgraded, _ = await add_blake3(chunk_set.backend, chunk_set.manifest)
    assert upgraded.has_blake3
    assert await _forward(tmp_path, ids) == before


# ------------------------------------------------------------------------- sw rehash
async def test_rehash_adds_blake3_and_keeps_the_chunk_ids(tmp_path: Path) -> None:
    old = make_chunk_set(tmp_path)
    assert not old.has_blake3
    async with await ChunkSet.open(str(tmp_path), Settings()) as chunk_set:
        new, raw = await add_blake3(chunk_set.backend, chunk_set.manifest)
    assert new.has_blake3 and Manifest.load(tmp_path) == new
    assert (tmp_path / MANIFEST_FILE).read_bytes() == raw
    assert [dataclasses.replace(c, blake3=None) for c in new.chunks] == old.chunks
    report = await verify_chunk_set(FilesystemBackend(tmp_path))
    assert report.ok, report.bad


def test_rehash_refuses_a_damaged_chunk_set_and_writes_nothing(tmp_path: Path) -> None:
    manifest = make_chunk_set(tmp_path)
    before = (tmp_path / MANIFEST_FILE).read_bytes()
    target = tmp_path / manifest.chunks[1].file
    target.write_bytes(flipped(target.read_bytes()))
    code = sw_main(["rehash", str(tmp_path)])
    assert code == 1
    assert (tmp_path / MANIFEST_FILE).read_bytes() == before


def test_sw_rehash_repins_and_reregisters_a_pinned_location(
    tmp_path: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make_chunk_set(tmp_path)
    pinned = pin_location(str(tmp_path), (tmp_path / MANIFEST_FILE).read_bytes())
    code = sw_main(["rehash", pinned, "--register", "tiny", "--redis-url", redis_url])
    assert code == 0
    new_location = capsys.readouterr().out.strip().splitlines()[-1]
    raw = (tmp_path / MANIFEST_FILE).read_bytes()
    assert new_location == pin_location(str(tmp_path), raw) != pinned
    assert Manifest.from_json(raw).has_blake3
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.hget(Keys("sw").models, "tiny").decode() == new_location
    finally:
        client.close()


def test_the_old_pin_refuses_the_rehashed_manifest(tmp_path: Path) -> None:
    make_chunk_set(tmp_path)
    pinned = pin_location(str(tmp_path), (tmp_path / MANIFEST_FILE).read_bytes())
    assert sw_main(["rehash", pinned]) == 0
    assert sw_main(["verify", pinned]) == 2  # the old pin no longer matches
    assert sw_main(["verify", pin_location(pinned, (tmp_path / MANIFEST_FILE).read_bytes())]) == 0


async def test_verify_reports_a_blake3_mismatch(tmp_path: Path) -> None:
    make_chunk_set(tmp_path)
    async with await ChunkSet.open(str(tmp_path), Settings()) as chunk_set:
        await add_blake3(chunk_set.backend, chunk_set.manifest)
    raw = json.loads((tmp_path / MANIFEST_FILE).read_text())
    raw["chunks"][0]["blake3"] = "0" * 64
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(raw))
    report = await verify_chunk_set(FilesystemBackend(tmp_path))
    assert [(b.name, b.problem) for b in report.bad] == [(raw["chunks"][0]["name"], "blake3")]

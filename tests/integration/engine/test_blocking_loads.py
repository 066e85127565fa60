"""Streamed chunks of a folder or the Redis cache load on the engine's loader threads (no
event-loop hop), each built once per buffer it lands in and laid over later leases by views:
the same tokens as a resident engine, and still verified on every arrival -- a cache hit laid
over a built chunk on the compute thread, before its first use."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch

from sw_core.cache import ChunkCache
from sw_core.chunks.chunker import chunk_model
from sw_core.chunks.manifest import Manifest
from sw_core.engine import StreamingEngine
from sw_core.exceptions import SecurityError
from tests.support.engine import cached_source, chunk_cache, id_rows
from tests.support.models import small_model

ROWS = id_rows([7, 5])
NEW_TOKENS = 6


def _packed(folder: Path) -> Manifest:
    return chunk_model(
        small_model("llama"), folder, name="packed", max_chunk_mb=0.25, quantize="int4"
    )


def _counting(engine: StreamingEngine) -> dict[str, int]:
    """Counts the loads that went off the event loop and the chunk builds."""
    counts = {"blocking": 0, "builds": 0}
    loader = engine.residency._loader
    load, deserialize = loader._load_blocking, engine.skeleton.deserialize

    def counted_load(chunk: Any) -> Any:
        counts["blocking"] += 1
        return load(chunk)

    def counted_build(chunk: Any, data: Any) -> Any:
        counts["builds"] += 1
        return deserialize(chunk, data)

    loader._load_blocking = counted_load
    engine.skeleton.deserialize = counted_build  # type: ignore[method-assign]
    return counts


async def _generate(engine: StreamingEngine) -> list[list[int]]:
    out = await engine.run_async(
        "generate", [{"input_ids": r, "max_new_tokens": NEW_TOKENS} for r in ROWS]
    )
    return [o["token_ids"] for o in out]


async def test_streamed_chunks_load_off_the_loop_and_are_built_once_per_buffer(
    tmp_path: Path,
) -> None:
    _packed(tmp_path)
    resident = await StreamingEngine.open(
        str(tmp_path), memory_budget_mb=2048, compute_dtype="bfloat16"
    )
    streamed = await StreamingEngine.open(
        str(tmp_path), memory_budget_mb=1, compute_dtype="bfloat16"
    )
    try:
        assert streamed.plan.mode == "streaming"
        counts = _counting(streamed)
        expected = await _generate(resident)
        assert await _generate(streamed) == expected
        assert await _generate(streamed) == expected
        loads = streamed.residency.stats.loads
        assert counts["blocking"] == loads - len(streamed.plan.keep) > 0
        assert counts["builds"] < loads / 2  # later arrivals were laid over, not rebuilt
    finally:
        resident.close()
        streamed.close()


async def test_a_chunk_changed_after_its_first_build_is_refused(tmp_path: Path) -> None:
    manifest = _packed(tmp_path)
    engine = await StreamingEngine.open(str(tmp_path), memory_budget_mb=1)
    try:
        await _generate(engine)
        victim = next(c for c in manifest.chunks if c.role == "block")
        assert victim.name not in engine.plan.keep
        path = tmp_path / victim.file
        data = bytearray(path.read_bytes())
        read_bytes = victim.kernel_bytes or victim.size_bytes  # what the engine reads of it
        data[read_bytes - 5] ^= 0xFF
        path.write_bytes(bytes(data))
        with pytest.raises(SecurityError, match=victim.name.replace(".", r"\.")):
            await _generate(engine)
    finally:
        engine.close()


async def test_redis_cache_hits_load_off_the_loop(tmp_path: Path, redis_url: str) -> None:
    manifest = _packed(tmp_path)
    cache = chunk_cache(redis_url)
    source = cached_source(tmp_path, manifest, cache)
    engine = await StreamingEngine.open(source, memory_budget_mb=1, compute_dtype="bfloat16")
    try:
        counts = _counting(engine)
        first = await _generate(engine)
        hits = source.cache_hits
        assert await _generate(engine) == first
        assert source.cache_hits > hits and counts["blocking"] > 0
        assert source.cache_hits + source.cache_misses == engine.residency.stats.loads
    finally:
        engine.close()
        cache.close()


def _damage_cache(cache: ChunkCache) -> int:
    """Flip the last byte of part 0 of every cached chunk; how many."""
    client = cache.redis
    keys = list(client.scan_iter(match=f"{cache.keys.cache_part_prefix}*:0"))
    for key in keys:
        end = client.strlen(key) - 1
        client.setrange(key, end, bytes([client.getrange(key, end, end)[0] ^ 0xFF]))
    return len(keys)


def _checking_threads(cache: ChunkCache) -> list[str]:
    """Names of the threads that run the deferred checks of ``cache``'s hits."""
    names: list[str] = []
    check = cache._check_later

    def recorded(*args: Any) -> bool:
        names.append(threading.current_thread().name)
        return check(*args)

    cache._check_later = recorded  # type: ignore[method-assign]
    return names


@contextlib.asynccontextmanager
async def _streamed_from_cache(
    folder: Path, redis_url: str
) -> AsyncIterator[tuple[Manifest, ChunkCache, StreamingEngine]]:
    """The packed model streamed from the Redis cache at a 1 MiB budget."""
    manifest = _packed(folder)
    cache = chunk_cache(redis_url)
    source = cached_source(folder, manifest, cache)
    engine = await StreamingEngine.open(source, memory_budget_mb=1, compute_dtype="bfloat16")
    try:
        yield manifest, cache, engine
    finally:
        engine.close()
        cache.close()


async def test_a_damaged_cache_hit_is_caught_before_use_and_read_again(
    tmp_path: Path, redis_url: str
) -> None:
    async with _streamed_from_cache(tmp_path, redis_url) as (_, cache, engine):
        threads = _checking_threads(cache)
        first = await _generate(engine)
        assert await _generate(engine) == first  # every streamed chunk built in its buffers
        assert threads and all(name.startswith("sw-compute") for name in threads)
        assert _damage_cache(cache) > 0
        corruptions = cache.info().corruptions
        assert await _generate(engine) == first
        refetched = engine.cache_info()["refetched"]
        assert refetched == engine.residency.stats.refetched > 0
        assert cache.info().corruptions - corruptions >= refetched
        assert await _generate(engine) == first  # read again from the folder, cached again


async def test_a_chunk_damaged_in_the_cache_and_the_store_is_refused(
    tmp_path: Path, redis_url: str
) -> None:
    async with _streamed_from_cache(tmp_path, redis_url) as (manifest, cache, engine):
        await _generate(engine)
        await _generate(engine)
        _damage_cache(cache)
        for chunk in manifest.chunks:
            if chunk.role == "block" and chunk.name not in engine.plan.keep:
                path = tmp_path / chunk.file
                data = bytearray(path.read_bytes())
                data[(chunk.kernel_bytes or chunk.size_bytes) - 5] ^= 0xFF
                path.write_bytes(bytes(data))
        with pytest.raises(SecurityError, match=r"chunk 'model\.layers"):
            await _generate(engine)


async def test_the_loader_threads_stop_with_the_engine(tmp_path: Path) -> None:
    _packed(tmp_path)
    engine = await StreamingEngine.open(str(tmp_path), memory_budget_mb=1)
    await _generate(engine)
    threads = engine.residency._loader._threads
    assert threads is not None
    engine.close()
    with pytest.raises(RuntimeError, match="shutdown"):
        threads.submit(torch.zeros, 1)

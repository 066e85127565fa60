"""A worker's engine on RemoteChunkSource (real Redis, a real arq loader in this process):
cache hits are read on the engine's loader thread, their digest check left to the compute
thread; misses -- waiting for a loader, or read past a cache that would not take them --
are finished on the event loop while the loader thread goes on."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import redis

from sw_core.cache import ChunkCache
from sw_core.chunks.chunker import chunk_model
from sw_core.engine import StreamingEngine
from sw_core.keys import Keys
from sw_core.pipeline.registry import ModelRegistry
from sw_core.settings import Settings
from tests.support.engine import id_rows
from tests.support.models import small_model
from tests.support.pipeline import loader_worker
from tests.support.settings import fast_settings
from workers.chunks.chunk_source import RemoteChunkSource

ROWS = id_rows([6, 4])


@pytest.fixture
async def registered(tmp_path: Path, redis_url: str, redis_client: Any) -> tuple[Settings, Path]:
    folder = tmp_path / "llama"
    chunk_model(small_model("llama"), folder, name="llama", max_chunk_mb=0.25)
    settings = fast_settings(redis_url, models="", cache_size_mb=64, timeout_seconds=20)
    await ModelRegistry(redis_client, settings).register("llama", str(folder))
    return settings, folder


async def _generate(engine: StreamingEngine) -> list[list[int]]:
    out = await engine.run_async("generate", [{"input_ids": r, "max_new_tokens": 5} for r in ROWS])
    return [o["token_ids"] for o in out]


async def _expected(folder: Path) -> list[list[int]]:
    resident = await StreamingEngine.open(str(folder), memory_budget_mb=2048)
    try:
        return await _generate(resident)
    finally:
        await resident.aclose()


def _lookup_threads(cache: ChunkCache) -> list[str]:
    """Names of the threads that look chunks up in ``cache`` from now on."""
    names: list[str] = []
    lookup = cache.lookup

    def recorded(*args: Any, **kwargs: Any) -> Any:
        names.append(threading.current_thread().name)
        return lookup(*args, **kwargs)

    cache.lookup = recorded  # type: ignore[method-assign]
    return names


async def test_cold_chunks_come_from_a_loader_and_hits_load_on_the_loader_thread(
    registered: tuple[Settings, Path],
) -> None:
    settings, folder = registered
    expected = await _expected(folder)
    source = RemoteChunkSource("llama", settings)
    engine = await StreamingEngine.open(source, memory_budget_mb=1)
    try:
        assert engine.plan.mode == "streaming"
        threads = _lookup_threads(source.cache)
        async with loader_worker(settings) as loader:
            assert await _generate(engine) == expected  # cold: every miss through the loader
            assert loader.storage_loads > 0 and source.remote_loads > 0
            asked = source.remote_loads
            threads.clear()
            assert await _generate(engine) == expected
        assert source.remote_loads == asked  # all hits
        assert threads and all(name.startswith("sw-load") for name in threads)
    finally:
        await engine.aclose()
        await source.close()


async def test_misses_the_cache_refuses_are_read_past_it(
    registered: tuple[Settings, Path], redis_url: str
) -> None:
    settings, folder = registered
    expected = await _expected(folder)
    client = redis.Redis.from_url(redis_url)
    # a cache of one byte takes no chunk in: every read goes past it
    cache = ChunkCache(client, keys=Keys(settings.key_prefix), cache_size_bytes=1)
    source = RemoteChunkSource("llama", settings, cache=cache)
    engine = await StreamingEngine.open(source, memory_budget_mb=1)
    try:
        threads = _lookup_threads(cache)
        assert await _generate(engine) == expected
        assert await _generate(engine) == expected
        assert source.direct_reads > 0 and source.remote_loads == 0
        assert any(name.startswith("sw-load") for name in threads)  # handed to the loop
        assert cache.info().chunks == 0
    finally:
        await engine.aclose()
        await source.close()
        cache.close()
        client.close()

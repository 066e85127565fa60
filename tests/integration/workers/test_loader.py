"""Chunk loads through real arq workers: single flight, timeouts, failures, re-loads."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from arq.worker import Worker

from sw_core.cache import ChunkCache
from sw_core.chunks.manifest import MANIFEST_FILE, ChunkInfo, Manifest
from sw_core.exceptions import ChunkNotFoundError, ModelError, SecurityError, WeightServerError
from sw_core.pipeline.registry import ModelRegistry
from sw_core.settings import Settings
from sw_core.storage.location import pin_location
from tests.support.observe import KEYS
from tests.support.pipeline import loader_worker
from tests.support.processes import start_worker
from tests.support.settings import fast_settings
from tests.support.waiting import wait_until
from workers.chunks.chunk_source import RemoteChunkSource
from workers.node import worker_options


def write_chunk_set(folder: Path, n_chunks: int = 2, size_bytes: int = 256 << 10) -> Manifest:
    """A small chunk set: random chunk files plus a manifest with their sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    chunks = []
    for i in range(n_chunks):
        data = os.urandom(size_bytes)
        name = f"block_{i:03d}"
        (folder / f"{name}.safetensors").write_bytes(data)
        chunks.append(
            ChunkInfo(
                name=name,
                file=f"{name}.safetensors",
                size_bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                tensors=[f"layer.{i}.weight"],
                role="block",
                stack="layer",
                index=i,
            )
        )
    manifest = Manifest(
        name="tiny", architecture="test", model_class="none", dtype="float32", chunks=chunks
    )
    manifest.save(folder)
    return manifest


@pytest.fixture
async def chunk_set(tmp_path: Path, redis_url: str, redis_client) -> tuple[Settings, Manifest]:
    folder = tmp_path / "tiny"
    manifest = write_chunk_set(folder)
    settings = fast_settings(redis_url, models="", cache_size_mb=16, timeout_seconds=5)
    await ModelRegistry(redis_client, settings).register("tiny", str(folder))
    return settings, manifest


@contextlib.asynccontextmanager
async def sources(
    settings: Settings, n: int, **kw: float
) -> AsyncIterator[list[RemoteChunkSource]]:
    made = [RemoteChunkSource("tiny", settings, **kw) for _ in range(n)]
    try:
        yield made
    finally:
        for source in made:
            await source.close()


async def test_five_concurrent_fetches_of_a_missing_chunk_load_it_once(chunk_set, tmp_path) -> None:
    settings, manifest = chunk_set
    chunk = manifest.chunks[0]
    expected = (tmp_path / "tiny" / chunk.file).read_bytes()
    async with loader_worker(settings) as loader, sources(settings, 5) as five:
        # five separate processes' worth of clients: arq's job id makes it one load
        datas = await asyncio.gather(*(s.fetch(chunk) for s in five))
        assert all(bytes(d) == expected for d in datas)
        assert loader.storage_loads == 1
        # and five fetches from one source share one wait
        other = manifest.chunks[1]
        datas = await asyncio.gather(*(five[0].fetch(other) for _ in range(5)))
        assert all(hashlib.sha256(d).hexdigest() == other.sha256 for d in datas)
        assert loader.storage_loads == 2
        assert five[0].remote_loads <= 2


async def test_fetch_times_out_with_weight_server_error_when_no_loader_runs(chunk_set) -> None:
    settings, manifest = chunk_set
    async with sources(settings, 1, timeout_s=0.5) as (source,):
        started = time.monotonic()
        with pytest.raises(WeightServerError, match=r"'block_000' of model 'tiny'.*0\.5 s"):
            await source.fetch(manifest.chunks[0])
        assert 0.45 < time.monotonic() - started < 3


async def test_a_cold_chunk_counts_one_miss_and_no_hit(chunk_set) -> None:
    """The read that follows a remote load is not a second lookup: the hit rate an
    operator sees is misses = chunks loaded, hits = chunks found."""
    settings, manifest = chunk_set
    with ChunkCache.from_settings(settings) as cache:
        cache.clear()
        async with loader_worker(settings), sources(settings, 1) as (source,):
            for chunk in manifest.chunks:
                await source.fetch(chunk)
            cold = cache.info()
            for chunk in manifest.chunks:
                await source.fetch(chunk)
            warm = cache.info()
    n_chunks = len(manifest.chunks)
    assert (cold.misses, cold.hits) == (n_chunks, 0)
    assert (warm.misses, warm.hits) == (n_chunks, n_chunks)


async def test_a_cache_hit_needs_no_loader(chunk_set, tmp_path) -> None:
    settings, manifest = chunk_set
    chunk = manifest.chunks[1]
    data = (tmp_path / "tiny" / chunk.file).read_bytes()
    with ChunkCache.from_settings(settings) as cache:
        cache.put(chunk.sha256, data)
    async with sources(settings, 1, timeout_s=0.2) as (source,):
        assert bytes(await source.fetch(chunk)) == data
        assert source.remote_loads == 0


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
async def test_a_load_failure_reaches_the_waiters_fast(chunk_set, tmp_path, damage: str) -> None:
    settings, manifest = chunk_set
    chunk = manifest.chunks[0]
    path = tmp_path / "tiny" / chunk.file
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(b"tampered" + path.read_bytes()[8:])
    expected = ChunkNotFoundError if damage == "missing" else SecurityError
    async with loader_worker(settings) as loader, sources(settings, 2, timeout_s=10) as two:
        started = time.monotonic()
        results = await asyncio.gather(*(s.fetch(chunk) for s in two), return_exceptions=True)
        assert time.monotonic() - started < 5
        assert all(isinstance(r, expected) for r in results), results
        assert "loading chunk 'block_000' of model 'tiny' failed" in str(results[0])
        assert loader.loads_failed >= 1


async def test_an_unknown_model_fails_with_model_error(chunk_set) -> None:
    settings, manifest = chunk_set
    source = RemoteChunkSource("unregistered", settings, timeout_s=10)
    try:
        async with loader_worker(settings):
            with pytest.raises(ModelError, match="not registered"):
                await source.fetch(manifest.chunks[0])
    finally:
        await source.close()


async def test_an_evicted_chunk_is_loaded_again(chunk_set) -> None:
    settings, manifest = chunk_set
    chunk = manifest.chunks[0]
    async with loader_worker(settings) as loader, sources(settings, 1) as (source,):
        await source.fetch(chunk)
        with ChunkCache.from_settings(settings) as cache:
            assert cache.delete(chunk.sha256)
        again = await source.fetch(chunk)
        assert hashlib.sha256(again).hexdigest() == chunk.sha256
        assert loader.storage_loads == 2  # the first load kept no arq result in the way


async def test_fetch_file_reads_the_chunk_sets_small_files(chunk_set, tmp_path) -> None:
    settings, _ = chunk_set
    async with sources(settings, 1) as (source,):
        raw = await source.fetch_file(MANIFEST_FILE)
    assert raw == (tmp_path / "tiny" / MANIFEST_FILE).read_bytes()
    assert Manifest.from_json(raw).name == "tiny"


async def test_a_pinned_model_refuses_a_changed_manifest_in_workers(
    chunk_set, redis_client, tmp_path
) -> None:
    """Registered with a manifest pin, the inference side and the loaders both refuse the
    chunk set once its manifest changed."""
    settings, manifest = chunk_set
    folder = tmp_path / "tiny"
    path = folder / MANIFEST_FILE
    pinned = pin_location(str(folder), path.read_bytes())
    await ModelRegistry(redis_client, settings).register("tiny", pinned)
    async with sources(settings, 1) as (source,):
        assert await source.fetch_file(MANIFEST_FILE) == path.read_bytes()
        path.write_bytes(path.read_bytes() + b"\n")  # what a re-upload or an edit would do
        with pytest.raises(SecurityError, match="not to its pin"):
            await source.fetch_file(MANIFEST_FILE)
    async with loader_worker(settings) as loader:
        outcome = await loader.load("tiny", manifest.chunks[0].name, manifest.chunks[0].sha256)
    assert outcome["ok"] is False and outcome["error_type"] == "SecurityError"
    assert loader.storage_loads == 0


@pytest.mark.slow
async def test_loader_settings_run_as_a_process(chunk_set, redis_client, tmp_path) -> None:
    settings, manifest = chunk_set
    from tests.support.processes import worker_env

    env = worker_env(settings, SW_WORKER_NAME="loader-proc", SW_CACHE_SIZE_MB="16")
    proc = start_worker(env, tmp_path / "loader.log", "workers.LoaderSettings")
    try:
        await wait_until(
            lambda: _exists(redis_client, KEYS.worker("loader-proc")), 30, "the loader process"
        )
        assert await redis_client.hget(KEYS.worker("loader-proc"), "kind") == b"loader"
        async with sources(settings, 3) as three:
            datas = await asyncio.gather(*(s.fetch(manifest.chunks[1]) for s in three))
        assert all(hashlib.sha256(d).hexdigest() == manifest.chunks[1].sha256 for d in datas)
        await wait_until(
            lambda: _chunks_loaded(redis_client, b"1"), 5, "the loader's heartbeat count"
        )
    finally:
        assert proc.stop() == 0, (tmp_path / "loader.log").read_text()[-3000:]


async def _exists(redis, key: str) -> bool:
    return bool(await redis.exists(key))


async def _chunks_loaded(redis, n: bytes) -> bool:
    return await redis.hget(KEYS.worker("loader-proc"), "chunks_loaded") == n


async def test_a_node_serves_loads_and_beats_while_a_batch_runs(chunk_set, redis_client) -> None:
    """``workers.Settings`` options: one process runs jobs AND loads chunks, and neither
    blocks the other (the handler computes off the event loop)."""
    from producer import Producer

    settings, manifest = chunk_set
    settings = settings.replace(
        handler="tests.support.handlers:SlowHandler", worker_name="node-1", models="m1=/srv/m1"
    )
    worker = Worker(**worker_options(settings, inference=True), handle_signals=False)
    task = asyncio.create_task(worker.async_run())
    try:
        await wait_until(lambda: "loader" in worker.ctx, 10, "the node to start")
        async with Producer(settings=settings) as p, sources(settings, 1) as (source,):
            job_id = await p.submit("m1", "embed", ["sleep=2.0"])
            await wait_until(lambda: _running(p, job_id), 5, "the slow job to start")
            beat_before = int(await redis_client.hget(KEYS.worker("node-1"), "beat_ms"))
            started = time.monotonic()
            data = await source.fetch(manifest.chunks[0])  # served by the busy node
            assert time.monotonic() - started < 1.0
            assert hashlib.sha256(data).hexdigest() == manifest.chunks[0].sha256
            await asyncio.sleep(0.5)
            info = await redis_client.hgetall(KEYS.worker("node-1"))
            assert int(info[b"beat_ms"]) > beat_before  # heartbeats kept flowing
            assert info[b"kind"] == b"inference" and info[b"current_jobs"] == job_id.encode()
            assert (await p.status(job_id))["status"] == "running"
            assert (await p.result(job_id, timeout_s=10))["job_id"] == job_id
    finally:
        await wait_until(
            lambda: all(t.done() for t in worker.tasks.values()), 10, "the node's loads to finish"
        )
        await worker.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _running(p, job_id: str) -> bool:
    return (await p.status(job_id))["status"] == "running"

"""The library facade and the engine's batch API: cache control, warmup, batching, prefetch,
seeded sampling, the sync entry point and an s3:// location."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from sw_core.cache import ChunkCache
from sw_core.chunks.chunker import chunk_model
from sw_core.chunks.manifest import ChunkInfo
from sw_core.chunks.verify import publish_chunk_set
from sw_core.engine import (
    CachedChunkSource,
    StoreChunkSource,
    StreamingBertModel,
    StreamingEngine,
    StreamingGPTModel,
    StreamingLlamaModel,
    StreamingT5Model,
)
from sw_core.exceptions import ChunkNotFoundError, ModelError
from sw_core.storage import FilesystemBackend, S3Backend
from tests.support.engine import chunk_cache, id_rows
from tests.support.models import ChunkedModel, chunk_small, small_model

ROWS = id_rows([6, 4, 5])


@pytest.fixture
def cache(redis_url: str) -> Iterator[ChunkCache]:
    cache = chunk_cache(redis_url)
    yield cache
    cache.close()


async def test_forward_cache_info_and_clear_cache(tmp_path: Path) -> None:
    model, manifest = chunk_small("gpt2", tmp_path)
    ids = torch.tensor(id_rows([5, 5]))
    async with StreamingGPTModel(tmp_path, memory_budget_mb=2048) as streaming:
        logits = await streaming.forward_async(ids)
        with torch.inference_mode():
            expected = model(input_ids=ids).logits
        for out, ref in zip(logits, expected, strict=True):
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)

        info = streaming.get_cache_info()
        # Everything fits: each chunk fetched once, the 2 MiB embedding matrix (four row
        # shards) concatenated once and shared with the tied LM head.
        assert (info["misses"], info["hits"], info["hit_rate"]) == (len(manifest.chunks), 0, 0.0)
        whole = [c for c in manifest.chunks if c.rows is None]
        assert sorted(info["resident_chunks"]) == sorted(c.name for c in whole)
        assert info["merged_tensors"] == ["transformer.wte.weight"]
        matrix = model.transformer.wte.weight
        resident = sum(c.size_bytes for c in whole) + matrix.numel() * matrix.element_size()
        assert info["memory_mb"] == pytest.approx(resident / (1 << 20))

        hits_before = info["hits"]
        await streaming.forward_async(ids[0])
        again = streaming.get_cache_info()
        assert again["misses"] == info["misses"] and again["hits"] == hits_before + len(whole)

        streaming.clear_cache()
        cleared = streaming.get_cache_info()
        assert cleared["memory_mb"] == 0 and cleared["resident_chunks"] == []
        engine = streaming.engine
        assert engine is not None
        assert all(p.is_meta for p in engine.model.parameters())
    assert streaming.engine is None  # closed on exit
    with pytest.raises(ModelError, match="not loaded"):
        streaming.get_cache_info()


async def test_warmup_preloads_resident_chunks_and_fills_the_shared_cache(
    tmp_path: Path, cache: ChunkCache
) -> None:
    _, manifest = chunk_small("llama", tmp_path)
    source = CachedChunkSource(cache, FilesystemBackend(tmp_path))
    async with StreamingLlamaModel(source, memory_budget_mb=2048) as streaming:
        report = await streaming.warmup()
        assert sorted(report["resident"]) == sorted(c.name for c in manifest.chunks)
        assert streaming.get_cache_info()["misses"] == len(manifest.chunks)
        await streaming.forward_async(ROWS[0])
        info = streaming.get_cache_info()
        assert info["misses"] == len(manifest.chunks)  # nothing fetched after the warmup
        assert source.cache_misses == len(manifest.chunks)

    # Streamed: warmup fetches through the source (into Redis) but keeps only what the
    # plan keeps.
    source = CachedChunkSource(cache, FilesystemBackend(tmp_path))
    async with StreamingLlamaModel(source, memory_budget_mb=2, prefetch_count=1) as streaming:
        engine = streaming.engine
        assert engine is not None and engine.plan.mode == "streaming"
        assert "model.layers.0" in engine.plan.keep and not engine.plan.merged
        report = await streaming.warmup(["model.layers.0", "embeddings.1"])
        assert report == {"resident": ["model.layers.0"], "fetched": ["embeddings.1"]}
        assert streaming.get_cache_info()["resident_chunks"] == ["model.layers.0"]
        assert source.cache_hits == 2  # both already in Redis from the first warmup
        with pytest.raises(ModelError, match="has no chunk 'nope'"):
            await streaming.warmup(["nope"])


async def test_a_failed_run_clears_the_cache(tmp_path: Path) -> None:
    _, manifest = chunk_small("t5", tmp_path)
    (tmp_path / manifest.chunk("decoder.block.1").file).unlink()
    async with StreamingT5Model(tmp_path) as streaming:
        with pytest.raises(ChunkNotFoundError, match=r"decoder\.block\.1"):
            await streaming.forward_async(ROWS[0])
        assert streaming.get_cache_info()["memory_mb"] == 0


async def test_clear_cache_during_a_run_does_not_block_the_loop(tmp_path: Path) -> None:
    chunk_small("gpt2", tmp_path)
    source = _GatedSource(tmp_path)
    async with StreamingGPTModel(source) as streaming:
        run = asyncio.create_task(streaming.forward_async(ROWS[0]))
        await asyncio.sleep(0.2)  # the run now waits for a gated chunk on this loop
        streaming.clear_cache()  # must return at once; the clear runs after the batch
        assert not run.done()
        source.gate.set()
        out = await run
        assert out.shape[0] == len(ROWS[0])
        await asyncio.sleep(0.1)
        assert streaming.get_cache_info()["memory_mb"] == 0


async def test_facade_checks_the_family_and_bad_inputs(
    tmp_path: Path, minilm_chunked: ChunkedModel
) -> None:
    chunk_small("gpt2", tmp_path)
    with pytest.raises(ModelError, match="StreamingBertModel runs bert models"):
        await StreamingBertModel(tmp_path).load()

    async with StreamingBertModel(minilm_chunked.folder, memory_budget_mb=64) as bert:
        one = await bert.embed_async("hello world")
        many = await bert.embed_async(["hello world", "goodbye"])
        assert len(one) == 384 and len(many) == 2
        assert torch.allclose(torch.tensor(one), torch.tensor(many[0]), atol=1e-6)
        with pytest.raises(ModelError, match="'text' is empty"):
            await bert.embed_async("")
        with pytest.raises(ModelError, match="cannot generate"):
            await bert.generate_async("hello")
        with pytest.raises(ModelError, match="accepts at most 512"):
            await bert.embed_async("word " * 600, truncate=False)
        assert len(await bert.embed_async("word " * 600)) == 384  # cut at max_seq_length
        with pytest.raises(ModelError, match="must be a string or a list"):
            await bert.embed_async(42)  # type: ignore[arg-type]


class _RecordingSource(StoreChunkSource):
    def __init__(self, folder: Path) -> None:
        super().__init__(FilesystemBackend(folder))
        self.fetched: list[str] = []

    async def fetch(self, chunk: ChunkInfo) -> bytearray | memoryview:
        self.fetched.append(chunk.name)
        return await super().fetch(chunk)


async def test_one_batch_loads_each_block_once(tmp_path: Path) -> None:
    """Streamed (2 MiB budget): four requests in one batch fetch each block as often as one
    request does -- once per pass."""
    _, manifest = chunk_small("llama", tmp_path)
    source = _RecordingSource(tmp_path)
    # A deep prefetch window takes the whole budget: no block stays resident.
    engine = await StreamingEngine.open(
        source, memory_budget_mb=2, max_batch_size=8, prefetch_count=4
    )
    try:
        assert engine.plan.mode == "streaming"
        streamed = [c.name for c in manifest.blocks() if c.name not in engine.plan.keep]
        assert streamed
        rows = id_rows([7, 7, 7, 7], seed=5)
        for batch in ([rows[0]], rows):
            source.fetched.clear()
            await engine.run_async("forward", [{"input_ids": r, "output": "hidden"} for r in batch])
            assert [n for n in source.fetched if n in streamed] == streamed
        source.fetched.clear()
        await engine.run_async("generate", [{"input_ids": r, "max_new_tokens": 3} for r in rows])
        assert [n for n in source.fetched if n in streamed] == streamed * 3  # once per step
    finally:
        engine.close()


class _GatedSource(StoreChunkSource):
    """Block chunks wait for ``gate``."""

    def __init__(self, folder: Path) -> None:
        super().__init__(FilesystemBackend(folder))
        self.gate = asyncio.Event()

    async def fetch(self, chunk: ChunkInfo) -> bytearray | memoryview:
        if chunk.role == "block":
            await self.gate.wait()
        return await super().fetch(chunk)


class _SlowSource:
    """A folder source whose every chunk fetch takes ``delay_s`` (a remote cache tier)."""

    def __init__(self, folder: Path, delay_s: float) -> None:
        self.inner = StoreChunkSource(FilesystemBackend(folder))
        self.delay_s = delay_s

    def describe(self) -> str:
        return "slow folder"

    async def fetch_file(self, name: str) -> bytes:
        return await self.inner.fetch_file(name)

    async def fetch(self, chunk: ChunkInfo) -> bytearray | memoryview:
        await asyncio.sleep(self.delay_s)
        return await self.inner.fetch(chunk)


async def test_prefetch_overlaps_fetches_with_compute(tmp_path: Path) -> None:
    chunk_small("gpt2", tmp_path)
    walls = {}
    for depth in (0, 3):
        engine = await StreamingEngine.open(
            _SlowSource(tmp_path, 0.05), memory_budget_mb=2, prefetch_count=depth
        )
        try:
            assert engine.plan.mode == "streaming"
            started = time.perf_counter()
            await engine.run_async("forward", [{"input_ids": ROWS[0]}])
            walls[depth] = time.perf_counter() - started
            info = engine.cache_info()
            assert (info["prefetched"] > 0) == (depth > 0)
        finally:
            engine.close()
    assert walls[3] < 0.7 * walls[0], walls


async def test_seeded_sampling_does_not_depend_on_the_batch(tmp_path: Path) -> None:
    chunk_small("llama", tmp_path)
    engine = await StreamingEngine.open(str(tmp_path))
    try:
        sampled = {"input_ids": ROWS[0], "max_new_tokens": 12, "temperature": 1.0, "seed": 7}
        [alone] = await engine.run_async("generate", [sampled])
        batch = await engine.run_async(
            "generate",
            [
                {"input_ids": ROWS[1], "max_new_tokens": 5},
                sampled,
                {**sampled, "seed": 8, "top_k": 50, "top_p": 0.9},
            ],
        )
        assert batch[1]["token_ids"] == alone["token_ids"]
        assert batch[2]["token_ids"] != alone["token_ids"]
        assert len(batch[0]["token_ids"]) <= 5  # its own max_new_tokens
        greedy = await engine.run_async("generate", [{"input_ids": ROWS[0], "max_new_tokens": 12}])
        assert greedy[0]["token_ids"] != alone["token_ids"]
    finally:
        engine.close()


def test_sync_run_from_a_worker_thread(tmp_path: Path) -> None:
    model, _ = chunk_small("bert", tmp_path)
    engine = asyncio.run(StreamingEngine.open(str(tmp_path), memory_budget_mb=2))
    try:
        [hidden] = engine.run("forward", [{"input_ids": ROWS[0]}])
        with torch.inference_mode():
            expected = model(input_ids=torch.tensor([ROWS[0]])).last_hidden_state[0]
        torch.testing.assert_close(torch.tensor(hidden), expected, atol=1e-5, rtol=0)
    finally:
        engine.close()


def _s3_backend(s3_server, bucket: str, prefix: str) -> S3Backend:
    return S3Backend(
        bucket,
        endpoint=s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        region=s3_server.region,
        prefix=prefix,
    )


async def test_model_from_an_s3_location(tmp_path: Path, s3_server, s3_bucket: str) -> None:
    model, _ = chunk_small("gpt2", tmp_path)
    backend = _s3_backend(s3_server, s3_bucket, "models/small-gpt2")
    report = await publish_chunk_set(tmp_path, backend)
    assert report.ok
    async with StreamingGPTModel(
        f"s3://{s3_bucket}/models/small-gpt2",
        s3_endpoint=s3_server.endpoint,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
        memory_budget_mb=2,
    ) as streaming:
        out = await streaming.forward_async(ROWS[0])
    with torch.inference_mode():
        expected = model(input_ids=torch.tensor([ROWS[0]])).logits[0]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


async def test_a_packed_model_from_s3_reads_its_blocks_as_kernel_views(
    tmp_path: Path, s3_server, s3_bucket: str
) -> None:
    chunk_model(small_model("llama"), tmp_path, name="packed", max_chunk_mb=0.25, quantize="int4")
    backend = _s3_backend(s3_server, s3_bucket, "models/packed")
    assert (await publish_chunk_set(tmp_path, backend)).ok
    request = [{"input_ids": ROWS[0], "max_new_tokens": 4}]
    engines = [
        await StreamingEngine.open(StoreChunkSource(where), memory_budget_mb=1)
        for where in (backend, FilesystemBackend(tmp_path))
    ]
    try:
        views = [{c.name for c in e.manifest.chunks if c.is_prefix} for e in engines]
        assert views[0] and views[0] == views[1]
        outs = [await e.run_async("generate", request) for e in engines]
        assert outs[0] == outs[1]
        # the same bytes from S3 as from the folder: each view's first bytes only
        assert engines[0].residency.stats.loaded_bytes == engines[1].residency.stats.loaded_bytes
    finally:
        for engine in engines:
            await engine.aclose()

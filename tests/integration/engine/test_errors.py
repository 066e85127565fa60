"""Failures: a chunk that cannot be had, or is not what the manifest says, stops the run with
an error naming model and chunk -- a block never runs with missing or wrong weights."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from sw_core.cache import ChunkCache
from sw_core.chunks.chunker import chunk_model
from sw_core.chunks.manifest import ChunkInfo, Manifest
from sw_core.engine import CachedChunkSource, StoreChunkSource, StreamingEngine
from sw_core.exceptions import (
    ChunkNotFoundError,
    ModelError,
    SecurityError,
    WeightServerError,
    is_transient,
)
from sw_core.hashing import hex_digest
from sw_core.storage import FilesystemBackend
from sw_core.utils import calculate_chunk_hash, mib
from tests.support.engine import chunk_cache, id_rows
from tests.support.models import MODEL_CLASSES, chunk_small, tiny_config

ROWS = id_rows([6, 4])


@pytest.fixture
def cache(redis_url: str) -> Iterator[ChunkCache]:
    cache = chunk_cache(redis_url)
    yield cache
    cache.close()


def _count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]

    def hook(*_: Any) -> None:
        calls[0] += 1

    module.register_forward_hook(hook)
    return calls


@pytest.mark.parametrize("via", ["folder", "redis-cache"])
async def test_missing_chunk_names_model_and_chunk_and_its_block_never_runs(
    tmp_path: Path, cache: ChunkCache, via: str
) -> None:
    _, manifest = chunk_small("gpt2", tmp_path)
    victim = manifest.chunk("transformer.h.1")
    (tmp_path / victim.file).unlink()
    store = FilesystemBackend(tmp_path)
    source = CachedChunkSource(cache, store) if via == "redis-cache" else StoreChunkSource(store)
    engine = await StreamingEngine.open(source, memory_budget_mb=2048)
    try:
        before = _count_calls(engine.model.get_submodule("transformer.h.0"))
        missing = _count_calls(engine.model.get_submodule("transformer.h.1"))
        with pytest.raises(ChunkNotFoundError) as err:
            await engine.run_async("forward", [{"input_ids": r} for r in ROWS])
        text = str(err.value)
        assert "'small-gpt2'" in text and "'transformer.h.1'" in text
        assert not is_transient(err.value)  # permanent: the job dead-letters at once
        assert before[0] == 1 and missing[0] == 0
        block = engine.model.get_submodule("transformer.h.1")
        assert all(p.is_meta for p in block.parameters())
        assert engine.materialized_bytes == 0  # cleared after the error

        # Once the chunk is back, the same engine runs and matches the in-memory model.
        model2, _ = chunk_small("gpt2", tmp_path)
        out = await engine.run_async("forward", [{"input_ids": ROWS[0]}])
        with torch.inference_mode():
            expected = model2(input_ids=torch.tensor([ROWS[0]])).logits[0]
        torch.testing.assert_close(torch.tensor(out[0]), expected, atol=1e-5, rtol=0)
    finally:
        engine.close()


async def test_corrupt_chunk_is_a_security_error_naming_it(tmp_path: Path) -> None:
    _, manifest = chunk_small("llama", tmp_path)
    victim = manifest.chunk("model.layers.2")
    path = tmp_path / victim.file
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    engine = await StreamingEngine.open(str(tmp_path), memory_budget_mb=2048)
    try:
        with pytest.raises(SecurityError, match=r"'small-llama'.*'model\.layers\.2'"):
            await engine.run_async("forward", [{"input_ids": ROWS[0]}])
    finally:
        engine.close()


def _rewrite_manifest(folder: Path, change: Any) -> None:
    manifest = Manifest.load(folder)
    data = json.loads(manifest.to_json())
    change(data)
    (folder / "manifest.json").write_text(json.dumps(data))


async def test_a_chunk_holding_other_tensors_is_refused_before_binding(tmp_path: Path) -> None:
    """A chunk whose bytes match its (forged) manifest entry but hold another block's tensors."""
    _, manifest = chunk_small("gpt2", tmp_path)
    h0, h1 = manifest.chunk("transformer.h.0"), manifest.chunk("transformer.h.1")
    (tmp_path / h0.file).write_bytes((tmp_path / h1.file).read_bytes())

    def forge(data: dict[str, Any]) -> None:
        entry = next(c for c in data["chunks"] if c["name"] == h0.name)
        entry["sha256"] = calculate_chunk_hash(tmp_path / h0.file)
        entry["blake3"] = hex_digest("blake3", (tmp_path / h0.file).read_bytes())
        entry["size_bytes"] = h1.size_bytes

    _rewrite_manifest(tmp_path, forge)
    engine = await StreamingEngine.open(str(tmp_path), memory_budget_mb=2048)
    try:
        with pytest.raises(SecurityError, match=r"'transformer\.h\.0' does not hold what"):
            await engine.run_async("forward", [{"input_ids": ROWS[0]}])
    finally:
        engine.close()


async def test_manifest_that_does_not_cover_the_model_fails_at_load(tmp_path: Path) -> None:
    chunk_small("gpt2", tmp_path)

    def drop_tensor(data: dict[str, Any]) -> None:
        entry = next(c for c in data["chunks"] if c["name"] == "transformer.h.2")
        entry["tensors"] = entry["tensors"][1:]

    _rewrite_manifest(tmp_path, drop_tensor)
    with pytest.raises(ModelError, match=r"'small-gpt2'.*'transformer\.h\.2' lacks 1 tensors"):
        await StreamingEngine.open(str(tmp_path))


async def test_unbound_weights_are_caught_before_a_block_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunk_small("llama", tmp_path)
    engine = await StreamingEngine.open(str(tmp_path), memory_budget_mb=2048)
    skeleton = engine.skeleton
    real_bind = skeleton.bind

    def lossy_bind(chunk: ChunkInfo, tensors: dict[str, torch.Tensor]) -> None:
        if chunk.name == "model.layers.1":
            tensors = dict(list(tensors.items())[1:])  # forget one tensor
        real_bind(chunk, tensors)

    monkeypatch.setattr(skeleton, "bind", lossy_bind)
    monkeypatch.setattr(engine.residency, "_bind", lossy_bind)
    layer = engine.model.get_submodule("model.layers.1")
    calls = _count_calls(layer)
    try:
        with pytest.raises(ModelError, match=r"block 'model\.layers\.1' would run with uninit"):
            await engine.run_async("forward", [{"input_ids": ROWS[0]}])
        assert calls[0] == 0
    finally:
        engine.close()


class _FailingSource:
    """Files from a folder; chunks fail the way a broken cache tier does."""

    def __init__(self, folder: Path, how: str) -> None:
        self.inner = StoreChunkSource(FilesystemBackend(folder))
        self.how = how
        self.release = asyncio.Event()

    def describe(self) -> str:
        return "failing source"

    async def fetch_file(self, name: str) -> bytes:
        return await self.inner.fetch_file(name)

    async def fetch(self, chunk: ChunkInfo) -> bytearray | memoryview:
        if chunk.role == "block":
            if self.how == "refused":
                raise ConnectionError("Connection refused")
            await self.release.wait()
        return await self.inner.fetch(chunk)


async def test_unreachable_cache_tier_is_a_transient_weight_server_error(tmp_path: Path) -> None:
    chunk_small("t5", tmp_path)
    source = _FailingSource(tmp_path, "refused")
    engine = await StreamingEngine.open(source, memory_budget_mb=2048)
    try:
        with pytest.raises(WeightServerError, match=r"'small-t5': chunk 'encoder\.block\.0'"):
            await engine.run_async("forward", [{"input_ids": ROWS[0]}])
    finally:
        engine.close()


async def test_a_chunk_that_never_arrives_times_out_and_the_engine_recovers(
    tmp_path: Path,
) -> None:
    chunk_small("bert", tmp_path)
    source = _FailingSource(tmp_path, "hangs")
    engine = await StreamingEngine.open(source, memory_budget_mb=2048, timeout_seconds=0.5)
    try:
        with pytest.raises(
            WeightServerError, match=r"timed out after 0\.5 s .*'encoder\.layer\.0'"
        ):
            await engine.run_async("embed", [{"input_ids": ROWS[0]}])
        assert engine.materialized_bytes == 0
        source.release.set()
        [vector] = await engine.run_async("embed", [{"input_ids": ROWS[0]}])
        assert len(vector) == 64
    finally:
        engine.close()


async def test_cancelling_a_run_leaves_the_engine_usable(tmp_path: Path) -> None:
    chunk_small("gpt2", tmp_path)
    source = _FailingSource(tmp_path, "hangs")
    engine = await StreamingEngine.open(source, memory_budget_mb=2048)
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(engine.run_async("forward", [{"input_ids": ROWS[0]}]), 0.3)
        source.release.set()
        out = await engine.run_async("forward", [{"input_ids": ROWS[0]}])
        assert len(out[0]) == len(ROWS[0])
    finally:
        engine.close()


async def test_budget_below_the_largest_chunk_fails_at_load_naming_it(tmp_path: Path) -> None:
    config = tiny_config("llama")
    config.hidden_size, config.intermediate_size = 256, 1024  # blocks of about 3 MiB
    torch.manual_seed(0)
    manifest = chunk_model(MODEL_CLASSES["llama"](config).eval(), tmp_path, name="wide")
    block = manifest.chunk("model.layers.0")
    with pytest.raises(ModelError) as err:
        await StreamingEngine.open(str(tmp_path), memory_budget_mb=2)
    text = str(err.value)
    assert "memory_budget_mb=2 " in text and "'wide'" in text
    assert f"chunk 'model.layers.0' is {mib(block.size_bytes):.1f} MiB" in text


async def test_bad_requests_fail_alone_in_a_batch(tmp_path: Path) -> None:
    chunk_small("gpt2", tmp_path)
    engine = await StreamingEngine.open(str(tmp_path))
    try:
        results = await engine.run_async(
            "generate",
            [
                {"input_ids": ROWS[0], "max_new_tokens": 3},
                {"text": "no tokenizer here"},
                {"input_ids": [10**6]},
                "not a dict",
            ],
        )
        assert len(results[0]["token_ids"]) <= 3
        assert [type(r) for r in results[1:]] == [ModelError] * 3
        assert "ships no tokenizer" in str(results[1])
        with pytest.raises(ModelError, match="unknown task 'classify'"):
            await engine.run_async("classify", [{}])
    finally:
        engine.close()


async def test_a_pinned_location_refuses_a_changed_manifest(tmp_path: Path) -> None:
    from sw_core.storage.location import pin_location

    chunk_small("gpt2", tmp_path)
    manifest_path = tmp_path / "manifest.json"
    pinned = pin_location(str(tmp_path), manifest_path.read_bytes())
    engine = await StreamingEngine.open(pinned)
    try:
        assert len((await engine.run_async("forward", [{"input_ids": ROWS[0]}]))[0]) == 6
    finally:
        engine.close()
    # the same manifest, written again with other whitespace: valid, but not what was pinned
    manifest_path.write_text(json.dumps(json.loads(manifest_path.read_text()), indent=1))
    with pytest.raises(SecurityError, match="not to its pin"):
        await StreamingEngine.open(pinned)
    engine = await StreamingEngine.open(str(tmp_path))  # unpinned, it loads
    engine.close()

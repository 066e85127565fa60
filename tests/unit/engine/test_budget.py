"""The residency plan: what stays resident under a memory budget, decided at load time."""

from __future__ import annotations

import pytest

from sw_core.chunks.manifest import ChunkInfo, Manifest
from sw_core.engine.memory.budget import plan_residency, sharded_tensors
from sw_core.exceptions import ModelError
from tests.support.fakes import MIB, planned_chunk, planned_manifest


def test_a_model_that_fits_is_resident_and_merges_its_shards() -> None:
    manifest = (
        planned_manifest()
    )  # 1 + 16 + 40 + 0.5 = 57.5 MiB, merged 16 MiB, + one shard of room
    plan = plan_residency(manifest, 66 * MIB, prefetch_count=2)
    assert plan.mode == "resident"
    assert plan.keep == {"embeddings", "head", "layers.0", "layers.1", "layers.2", "layers.3"}
    assert plan.merged == {"emb.weight"}


def test_one_shard_short_of_room_streams_instead() -> None:
    plan = plan_residency(planned_manifest(), 64 * MIB, prefetch_count=2)
    assert plan.mode == "streaming"


def test_streaming_keeps_small_chunks_then_merged_then_blocks() -> None:
    manifest = planned_manifest()
    # window = 10 MiB x (1 running + 1 prefetched + 1 just released) = 30; pinned 1.5;
    # leftover 60 - 31.5 = 28.5: merged matrix (about 16 MiB) first, then one 10 MiB block.
    plan = plan_residency(manifest, 60 * MIB, prefetch_count=1)
    assert plan.mode == "streaming"
    assert plan.window_bytes == 30 * MIB
    assert plan.merged == {"emb.weight"}
    assert plan.keep == {"embeddings", "head", "layers.0"}


def test_streaming_spreads_kept_blocks_over_the_pass_from_the_first() -> None:
    # window 30 MiB (prefetch 1), pinned 1.5, merged 16: 64.5 MiB left keeps 6 blocks of 10
    # out of 12, every second one from layers.0; 54.5 MiB keeps 5
    manifest = planned_manifest(n_blocks=12)
    plan = plan_residency(manifest, 112 * MIB, prefetch_count=1)
    kept = sorted((c.name for c in manifest.blocks() if c.name in plan.keep), key=_index)
    assert kept == [f"layers.{i}" for i in range(0, 12, 2)]
    five = plan_residency(manifest, 102 * MIB, prefetch_count=1)
    kept = sorted((c.name for c in manifest.blocks() if c.name in five.keep), key=_index)
    assert kept == ["layers.0", "layers.2", "layers.4", "layers.7", "layers.9"]


def _index(name: str) -> int:
    return int(name.rsplit(".", 1)[1])


def test_prefetch_depth_shrinks_what_stays_resident() -> None:
    manifest = planned_manifest()
    deep = plan_residency(manifest, 60 * MIB, prefetch_count=3)  # window 50 MiB
    assert deep.merged == set() and deep.keep == {"embeddings", "head"}


def test_smallest_budget_streams_everything_but_small_chunks() -> None:
    manifest = planned_manifest()
    plan = plan_residency(manifest, int(11.5 * MIB), prefetch_count=2)
    assert plan.min_bytes == int(1.5 * MIB) + 10 * MIB
    assert plan.keep == {"embeddings", "head"} and plan.merged == set()
    assert plan.window_bytes == 10 * MIB


def test_budget_below_the_largest_chunk_names_chunk_size_and_budget() -> None:
    manifest = planned_manifest(block_mb=20)
    with pytest.raises(ModelError) as err:
        plan_residency(manifest, 16 * MIB, prefetch_count=2)
    text = str(err.value)
    assert "layers.0" in text and "20.0 MiB" in text and "memory_budget_mb=16" in text
    assert "'m'" in text


def test_shard_chunk_with_two_tensors_is_refused() -> None:
    bad = planned_chunk("embeddings.0", 1, "embeddings", rows=[0, 10])
    bad = ChunkInfo(**{**bad.__dict__, "tensors": ["a", "b"]})
    manifest = Manifest("m", "llama", "LlamaForCausalLM", "float32", [bad])
    with pytest.raises(ModelError, match="exactly one tensor"):
        sharded_tensors(manifest)


def test_shards_are_grouped_in_row_order() -> None:
    chunks = [
        planned_chunk("embeddings.1", 1, "embeddings", rows=[100, 200]),
        planned_chunk("embeddings.0", 1, "embeddings", rows=[0, 100]),
    ]
    groups = sharded_tensors(Manifest("m", "llama", "X", "float32", chunks))
    assert [c.name for c in groups["emb.weight"]] == ["embeddings.0", "embeddings.1"]

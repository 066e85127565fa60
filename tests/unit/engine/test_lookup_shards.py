"""Embedding matrices that are only looked up stay as row shards instead of being concatenated,
and kept chunks load back to back instead of at the pace of compute."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from sw_core.engine import StreamingEngine
from sw_core.engine.io.loop import LoopThread
from sw_core.engine.memory.budget import plan_residency
from sw_core.engine.memory.residency import Residency
from sw_core.engine.model.sharded import RowMemo, ShardedEmbedding
from tests.support.engine import id_rows, padded, reference_generate
from tests.support.fakes import FakeStore, block_chunk, planned_manifest
from tests.support.models import chunk_small
from tests.support.waiting import wait_until_sync

MIB = 1 << 20


# ------------------------------------------------------------------------- plan
def test_a_lookup_only_matrix_keeps_its_shards_and_needs_no_room_to_concatenate() -> None:
    manifest = planned_manifest()  # 1.5 MiB small + 16 MiB of shards + 40 MiB of blocks = 57.5 MiB
    merging = plan_residency(manifest, 60 * MIB, prefetch_count=2)
    assert merging.mode == "streaming"  # concatenating needs one more 8 MiB shard of room
    plan = plan_residency(manifest, 60 * MIB, prefetch_count=2, lookup_only={"emb.weight"})
    assert plan.mode == "resident"
    assert plan.merged == set()
    assert {"embeddings.0", "embeddings.1", "layers.3"} <= plan.keep
    assert plan.window_bytes == 0


def test_streaming_keeps_blocks_before_lookup_shards() -> None:
    """A lookup reads only the shards holding its ids; a block is read whole every pass: the
    budget keeps blocks first. A matrix the head reads whole is kept like a block, first."""
    manifest = planned_manifest()
    # Same budget as test_streaming_keeps_small_chunks_then_merged_then_blocks.
    plan = plan_residency(manifest, 60 * MIB, prefetch_count=2, lookup_only={"emb.weight"})
    assert plan.mode == "resident"
    plan = plan_residency(manifest, 50 * MIB, prefetch_count=1, lookup_only={"emb.weight"})
    assert plan.mode == "streaming" and plan.merged == set()
    # 50 MiB: a 30 MiB window (running, prefetched, just released), 1.5 MiB small chunks:
    # one 10 MiB block before 16 MiB of shards
    assert plan.keep == {"embeddings", "head", "layers.0"}
    plan = plan_residency(manifest, 54 * MIB, prefetch_count=1, lookup_only={"emb.weight"})
    assert plan.keep == {"embeddings", "head", "layers.0", "layers.2"}  # spread over the pass
    merged = plan_residency(manifest, 50 * MIB, prefetch_count=1)
    assert merged.merged == {"emb.weight"} and merged.keep == {"embeddings", "head"}


def test_unknown_lookup_names_change_nothing() -> None:
    manifest = planned_manifest()
    plain = plan_residency(manifest, 66 * MIB, prefetch_count=2)
    assert plan_residency(manifest, 66 * MIB, prefetch_count=2, lookup_only={"nope"}) == plain


# ------------------------------------------------------------------------- engine
@pytest.mark.parametrize(("kind", "lookup"), [("bert", True), ("llama", False)])
async def test_skeleton_knows_which_sharded_matrices_are_only_looked_up(
    kind: str, lookup: bool, tmp_path: Path
) -> None:
    """BERT's word embeddings are only looked up; SmolLM2-like LLaMA ties them to its head."""
    _, manifest = chunk_small(kind, tmp_path)
    engine = await StreamingEngine.open(str(tmp_path), memory_budget_mb=2048)
    try:
        sharded = {c.tensors[0] for c in manifest.chunks if c.rows is not None}
        assert sharded
        assert (engine.skeleton.lookup_only == sharded) is lookup
        assert engine.plan.mode == "resident"
        assert (engine.plan.merged == set()) is lookup
    finally:
        engine.close()


async def test_resident_bert_gathers_from_kept_shards_exactly(tmp_path: Path) -> None:
    model, manifest = chunk_small("bert", tmp_path)
    engine = await StreamingEngine.open(str(tmp_path), memory_budget_mb=2048)
    try:
        embeddings = engine.model.get_submodule("embeddings.word_embeddings")
        assert isinstance(embeddings, ShardedEmbedding)
        rows = id_rows([9, 5, 7])
        ids, mask = padded(rows, engine.pad_id, left=False)
        with torch.inference_mode():
            expected = model(input_ids=ids, attention_mask=mask).last_hidden_state
        for _ in range(2):  # cold, then from the kept shards
            requests = [{"input_ids": r, "output": "hidden"} for r in rows]
            out = await engine.run_async("forward", requests)
            for got, want, row in zip(out, expected, rows, strict=True):
                assert torch.equal(torch.tensor(got), want[: len(row)])
        shards = [c.name for c in manifest.chunks if c.rows is not None]
        assert set(shards) <= set(engine.cache_info()["resident_chunks"])
        assert engine.cache_info()["merged_tensors"] == []
    finally:
        await engine.aclose()


# ------------------------------------------------------------------------- prefetch
def _residency(store: FakeStore, loop: LoopThread, keep: tuple[str, ...]) -> Residency:
    res = Residency(
        model_name="tiny",
        budget_bytes=10_000 * 1024,
        keep=keep,
        prefetch_count=1,
        loader=store.load,
        bind=lambda c, t: None,
        unbind=lambda c: None,
        timeout_s=5.0,
    )
    res.begin(loop.submit)
    return res


def test_kept_chunks_load_back_to_back_while_the_first_one_is_in_use(loop: LoopThread) -> None:
    store = FakeStore(delay_s=0.02)
    chunks = [block_chunk(f"c{i}") for i in range(6)]
    res = _residency(store, loop, keep=tuple(c.name for c in chunks))
    res.set_schedule(chunks)
    res.acquire(chunks[0])  # compute sits on c0 and asks for nothing else
    wait_until_sync(lambda: len(store.loaded) == len(chunks), 5.0, "every chunk loaded", 0.005)
    assert store.loaded == [c.name for c in chunks]  # in schedule order
    assert store.peak_concurrent <= 2  # the one acquired plus prefetch_count ahead
    res.release(chunks[0])
    res.settle()
    assert sorted(res.resident_chunks()) == sorted(c.name for c in chunks)


def test_streamed_chunks_still_wait_for_compute(loop: LoopThread) -> None:
    store = FakeStore(delay_s=0.02)
    chunks = [block_chunk(f"c{i}") for i in range(6)]
    res = _residency(store, loop, keep=())
    res.set_schedule(chunks)
    res.acquire(chunks[0])
    wait_until_sync(lambda: len(store.loaded) >= 2, 5.0, "two chunks loaded", 0.005)
    time.sleep(0.1)  # time enough for four more loads, were they allowed
    assert store.loaded == ["c0", "c1"]  # one ahead: the window holds no more
    res.release(chunks[0])
    res.settle()
    assert res.materialized_bytes == 0


# ------------------------------------------------------------------------- tied head memo
@pytest.mark.parametrize("memo", [True, False])
async def test_greedy_decoding_looks_up_streamed_tied_rows_only_for_the_prompt(
    memo: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The head's top rows serve the next step's lookup: after the prompt, no lookup reads a
    shard. Without the memo every step reads one again; the tokens are the same either way."""
    if not memo:
        monkeypatch.setattr(RowMemo, "rows_for", lambda self, flat: [None] * flat.numel())
    model, _ = chunk_small("llama", tmp_path)
    engine = await StreamingEngine.open(tmp_path, memory_budget_mb=2, prefetch_count=1)
    lookups: list[int] = []
    try:
        embed = engine.model.get_submodule("model.embed_tokens")
        assert isinstance(embed, ShardedEmbedding) and embed.memo is not None
        looked_up = embed._looked_up

        def counting(flat: torch.Tensor) -> torch.Tensor:
            lookups.append(flat.numel())
            return looked_up(flat)

        monkeypatch.setattr(embed, "_looked_up", counting)
        rows = id_rows([6, 4])
        out = await engine.run_async(
            "generate", [{"input_ids": r, "max_new_tokens": 8} for r in rows]
        )
    finally:
        await engine.aclose()
    tokens = [o["token_ids"] for o in out]
    assert tokens == reference_generate(model, rows, 8, engine.pad_id)
    steps = max(len(t) for t in tokens) - 1  # decode steps after the prompt's pass
    assert steps > 2
    if memo:
        # the padded prompts' ids, then every step's ids from the memo
        assert lookups == [12] and embed.memo.hits == sum(len(t) - 1 for t in tokens)
    else:
        assert len(lookups) == 1 + steps

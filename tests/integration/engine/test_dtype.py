"""``sw chunk --dtype bfloat16|float16``: weights stored narrower, computed in the compute
dtype (``SW_COMPUTE_DTYPE``, float32 on CPU by default), counted widened in the budget."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from sw_core.chunks.manifest import Manifest
from sw_core.chunks.safetensors_io import load_tensors
from sw_core.engine import StreamingEngine
from sw_core.exceptions import ConfigError, ModelError
from sw_core.settings import Settings
from tests.support.engine import cached_source, chunk_cache, id_rows, padded, reference_generate
from tests.support.models import chunk_small


def rounded(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """The float32 model with every weight rounded to ``dtype`` (what the chunks hold)."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for param in twin.parameters():
            param.copy_(param.to(dtype).to(torch.float32))
    return twin


async def assert_runs_like(
    engine: StreamingEngine, reference: torch.nn.Module, *, atol: float
) -> None:
    """Last-position logits within ``atol`` of ``reference``'s, greedy tokens equal."""
    rows = id_rows([7, 5])
    logits = await engine.run_async(
        "forward", [{"input_ids": r, "output": "logits", "positions": "last"} for r in rows]
    )
    ids, mask = padded(rows, engine.pad_id, left=False)
    with torch.no_grad():
        full = reference(input_ids=ids, attention_mask=mask).logits.float()
    for n, (row, out) in enumerate(zip(rows, logits, strict=True)):
        torch.testing.assert_close(torch.tensor(out), full[n, len(row) - 1], atol=atol, rtol=0)
    tokens = await engine.run_async(
        "generate", [{"input_ids": r, "max_new_tokens": 5} for r in rows]
    )
    assert [t["token_ids"] for t in tokens] == reference_generate(reference, rows, 5, engine.pad_id)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_chunks_store_floating_weights_in_the_narrow_dtype(
    tmp_path: Path, dtype: torch.dtype
) -> None:
    name = str(dtype).removeprefix("torch.")
    _, wide = chunk_small("llama", tmp_path / "wide")
    _, narrow = chunk_small("llama", tmp_path / "narrow", dtype=name)
    assert narrow.dtype == name and wide.dtype == "float32"
    assert narrow.total_param_bytes * 2 == wide.total_param_bytes
    # row shards hold the same rows: widened back, they fit max_chunk_mb like the float32 ones
    assert [c.rows for c in narrow.chunks] == [c.rows for c in wide.chunks]
    assert any(c.rows for c in narrow.chunks)
    for chunk in narrow.chunks:
        tensors = load_tensors((tmp_path / "narrow" / chunk.file).read_bytes())
        assert {t.dtype for t in tensors.values() if t.dtype.is_floating_point} == {dtype}
    assert Manifest.load(tmp_path / "narrow").has_blake3


def test_an_unknown_stored_dtype_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="int4"):
        chunk_small("llama", tmp_path, dtype="int4")
    with pytest.raises(ConfigError, match="COMPUTE_DTYPE"):
        Settings(compute_dtype="float64").validate()


@pytest.mark.parametrize("budget_mb", [2048, 2])
async def test_bfloat16_chunks_compute_in_float32_like_the_rounded_model(
    tmp_path: Path, redis_url: str, budget_mb: int
) -> None:
    model, manifest = chunk_small("llama", tmp_path, dtype="bfloat16")
    reference = rounded(model, torch.bfloat16)
    cache = chunk_cache(redis_url)
    engine = await StreamingEngine.open(
        cached_source(tmp_path, manifest, cache), memory_budget_mb=budget_mb
    )
    try:
        assert engine.plan.mode == ("resident" if budget_mb > 100 else "streaming")
        await assert_runs_like(engine, reference, atol=1e-5)
        # every weight the model computes with is float32; the budget counts it widened
        assert {p.dtype for p in engine.model.parameters() if not p.is_meta} <= {torch.float32}
        assert engine.residency.expand == 2.0
        assert engine.peak_materialized_bytes <= budget_mb << 20
    finally:
        engine.close()
        cache.close()


@pytest.mark.parametrize("budget_mb", [2048, 2, 1])
async def test_bfloat16_chunks_computed_in_bfloat16_match_the_bfloat16_model(
    tmp_path: Path, redis_url: str, budget_mb: int
) -> None:
    """``SW_COMPUTE_DTYPE=bfloat16`` on a bfloat16 chunk set: nothing is widened, the budget
    counts stored bytes, and the tied embedding/head concatenated from its shards is counted
    at its bfloat16 size (at 2 MiB the plan keeps it whole only at that size)."""
    model, manifest = chunk_small("llama", tmp_path, dtype="bfloat16")
    reference = copy.deepcopy(model).to(torch.bfloat16)
    cache = chunk_cache(redis_url)
    engine = await StreamingEngine.open(
        cached_source(tmp_path, manifest, cache),
        memory_budget_mb=budget_mb,
        compute_dtype="bfloat16",
    )
    try:
        assert engine.plan.mode == ("streaming" if budget_mb == 1 else "resident")
        assert engine.residency.expand == 1.0
        await assert_runs_like(engine, reference, atol=2e-2)
        assert {p.dtype for p in engine.model.parameters() if not p.is_meta} <= {torch.bfloat16}
        if engine.plan.merged:
            assert engine.runtime.merged, "the tied embedding/head was concatenated"
        assert engine.peak_materialized_bytes <= budget_mb << 20
    finally:
        engine.close()
        cache.close()


@pytest.mark.parametrize("budget_mb", [2048, 1])
async def test_the_head_gets_a_contiguous_input_in_a_batched_prefill(
    tmp_path: Path, redis_url: str, budget_mb: int
) -> None:
    """transformers slices the last positions out of the hidden states before the head; for
    several prompts that view is not contiguous, and torch's CPU matmul then takes a
    broadcasting path (hundreds of MB of scratch and 40x the time in bfloat16). The engine
    hands the head (whole or streamed in row shards) a contiguous tensor."""
    model, manifest = chunk_small("llama", tmp_path, dtype="bfloat16")
    cache = chunk_cache(redis_url)
    engine = await StreamingEngine.open(
        cached_source(tmp_path, manifest, cache),
        memory_budget_mb=budget_mb,
        compute_dtype="bfloat16",
    )
    seen: list[tuple[tuple[int, ...], bool]] = []

    def record(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen.append((tuple(args[0].shape), args[0].is_contiguous()))

    head = engine.model.get_submodule(engine.skeleton.structure.head or "lm_head")
    head.register_forward_pre_hook(record)  # runs after the engine's own hooks
    try:
        rows = id_rows([7, 5, 6])
        tokens = await engine.run_async(
            "generate", [{"input_ids": r, "max_new_tokens": 3} for r in rows]
        )
        reference = copy.deepcopy(model).to(torch.bfloat16)
        assert [t["token_ids"] for t in tokens] == reference_generate(
            reference, rows, 3, engine.pad_id
        )
        assert seen[0][0][:2] == (3, 1), "the prefill's head input is the last position"
        assert all(contiguous for _, contiguous in seen), seen
    finally:
        engine.close()
        cache.close()

"""The engine's context length: a model's own positions bounded by the KV cache one sequence
may hold (``SW_MAX_KV_CACHE_MB``); past it a request is refused with a message naming the
limit and the setting, within it a long prompt runs (static and continuous alike)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from sw_core.chunks.chunker import chunk_model
from sw_core.context import kv_bytes_per_token
from sw_core.engine import StreamingEngine
from sw_core.engine.tasks.continuous import DecodeSession
from sw_core.exceptions import ModelError
from tests.support.engine import drive_session, id_rows, reference_generate
from tests.support.models import tiny_config


async def test_the_kv_budget_bounds_the_context_and_the_refusal_names_it(tmp_path: Path) -> None:
    # positions for a million tokens: only the KV budget (1 MiB) bounds this model
    config = tiny_config("llama", max_position_embeddings=1 << 20)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    chunk_model(model, tmp_path, name="long")
    per_token = kv_bytes_per_token(config)
    engine = await StreamingEngine.open(tmp_path, memory_budget_mb=64, max_kv_cache_mb=1)
    try:
        context = engine.limits.context
        assert context is not None
        tokens = (1 << 20) // per_token
        assert context.context_length == tokens and tokens < 1 << 20
        prompt = id_rows([tokens - 8], vocab=config.vocab_size)[0]
        [refused] = await engine.run_async(
            "generate", [{"input_ids": prompt, "max_new_tokens": 16}]
        )
        assert isinstance(refused, ModelError)
        assert f"{tokens} tokens" in str(refused) and "SW_MAX_KV_CACHE_MB" in str(refused)
        long = prompt[: tokens - 100]
        [static] = await engine.run_async("generate", [{"input_ids": long, "max_new_tokens": 16}])
        session = DecodeSession(engine, engine.settings.kv_cache_bytes)
        with pytest.raises(ModelError, match="SW_MAX_KV_CACHE_MB"):
            session.parse("x", {"input_ids": prompt, "max_new_tokens": 16})
        done = await drive_session(
            session, {1: [session.parse("a", {"input_ids": long, "max_new_tokens": 16})]}
        )
    finally:
        await engine.aclose()
    pad = model.generation_config.pad_token_id or 0
    [want] = reference_generate(model, [long], 16, pad)
    assert static["token_ids"] == want and done["a"].tokens == want


async def test_static_batches_stay_within_the_kv_budget(tmp_path: Path) -> None:
    config = tiny_config("llama", max_position_embeddings=1 << 20)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    chunk_model(model, tmp_path, name="long")
    tokens = (1 << 20) // kv_bytes_per_token(config)
    engine = await StreamingEngine.open(tmp_path, memory_budget_mb=64, max_kv_cache_mb=1)
    first_calls: list[int] = []
    engine.model.register_forward_pre_hook(
        lambda _m, _a, kw: (
            first_calls.append(kw["input_ids"].shape[0]) if kw["input_ids"].shape[1] > 1 else None
        ),
        with_kwargs=True,
    )
    try:
        # each fits alone, two do not: three batches of one; then six short ones in one
        rows = id_rows([tokens // 2] * 3, vocab=config.vocab_size)
        longs = await engine.run_async(
            "generate", [{"input_ids": r, "max_new_tokens": 8} for r in rows]
        )
        shorts = await engine.run_async(
            "generate", [{"input_ids": r[:20], "max_new_tokens": 8} for r in rows * 2]
        )
    finally:
        await engine.aclose()
    assert first_calls == [1, 1, 1, 3]  # the six short rows: three distinct prompts, run once
    pad = model.generation_config.pad_token_id or 0
    assert [r["token_ids"] for r in longs] == reference_generate(model, rows, 8, pad)
    assert [r["token_ids"] for r in shorts[:3]] == [r["token_ids"] for r in shorts[3:]]

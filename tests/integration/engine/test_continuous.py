"""DecodeSession: sequences joining a running batch between steps produce exactly what
transformers' ``generate`` produces for each alone; seeded sampling is the same in company."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sw_core.engine import StreamingEngine
from sw_core.engine.tasks.continuous import DecodeSession
from tests.support.engine import drive_session, id_rows, reference_generate
from tests.support.models import chunk_small


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
async def test_joining_rows_equal_transformers_generate(kind: str, tmp_path: Path) -> None:
    model, _ = chunk_small(kind, tmp_path)
    # 2 MiB: the weights stream block by block at every step
    engine = await StreamingEngine.open(tmp_path, memory_budget_mb=2, prefetch_count=1)
    try:
        session = DecodeSession(engine, 64 << 20)
        rows = id_rows([5, 9, 3, 12])
        new = [20, 6, 11, 15]
        seqs = [
            session.parse(f"r{i}", {"input_ids": r, "max_new_tokens": n})
            for i, (r, n) in enumerate(zip(rows, new, strict=True))
        ]
        # r0 alone, r1 joins at step 3, r2 and r3 at step 5 while r0 and r1 still run
        done = await drive_session(session, {1: [seqs[0]], 3: [seqs[1]], 5: [seqs[2], seqs[3]]})
    finally:
        await engine.aclose()
    pad = model.generation_config.pad_token_id or 0
    for i, (row, n) in enumerate(zip(rows, new, strict=True)):
        [want] = reference_generate(model, [row], n, pad)
        assert done[f"r{i}"].tokens == want, i
    assert [done[f"r{i}"].joined_step for i in range(4)] == [1, 3, 5, 5]


async def test_seeded_sampling_is_the_same_alone_or_in_company(tmp_path: Path) -> None:
    chunk_small("llama", tmp_path)
    engine = await StreamingEngine.open(tmp_path, memory_budget_mb=64)
    try:
        req = {
            "input_ids": id_rows([7])[0],
            "max_new_tokens": 12,
            "temperature": 0.9,
            "top_k": 50,
            "seed": 1234,
        }
        alone = await drive_session(
            session := DecodeSession(engine, 64 << 20), {1: [session.parse("s", req)]}
        )
        other = DecodeSession(engine, 64 << 20)
        mates = [
            other.parse(f"m{i}", {"input_ids": r, "max_new_tokens": 20, "temperature": 1.0})
            for i, r in enumerate(id_rows([4, 10], seed=5))
        ]
        company = await drive_session(other, {1: mates, 2: [other.parse("s", req)]})
    finally:
        await engine.aclose()
    assert company["s"].tokens == alone["s"].tokens
    assert len(alone["s"].tokens) == 12


async def test_kv_budget_refuses_a_request_that_cannot_fit(tmp_path: Path) -> None:
    chunk_small("llama", tmp_path)
    engine = await StreamingEngine.open(tmp_path, memory_budget_mb=64)
    try:
        session = DecodeSession(engine, 4096)
        from sw_core.exceptions import ModelError

        with pytest.raises(ModelError, match="SW_MAX_KV_CACHE_MB"):
            session.parse("x", {"input_ids": [3, 4, 5], "max_new_tokens": 50})
        # two rows of 10 + 40 tokens need exactly 100 tokens of cache
        small = DecodeSession(engine, 99 * session.token_bytes)
        a = small.parse("a", {"input_ids": [3] * 10, "max_new_tokens": 40})
        b = small.parse("b", {"input_ids": [3] * 10, "max_new_tokens": 40})
        assert small.fits([a]) and not small.fits([a, b])
    finally:
        await engine.aclose()
    assert torch.is_grad_enabled()

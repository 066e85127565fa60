"""Parity for the further decoder families: Qwen2, Qwen3, Mistral, Gemma 2, Gemma 3, Phi-3, OPT.

Each random-init model (see ``tests/family_zoo.py``: grouped-query attention, tied and untied
heads, a 4-token sliding window shorter than the prompts) runs twice from its chunk folder:
resident, and streamed under a 1 MiB budget below the model's size, where the 1 MiB embedding
matrix is never whole (four row shards). Hidden states and logits must agree with transformers
in memory within 1e-5, and batched greedy generation must equal transformers' ``generate``
token for token.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sw_core.chunks.chunker import chunk_model
from sw_core.engine import StreamingEngine
from tests.support.engine import id_rows, padded, reference_generate
from tests.support.family_zoo import DECODERS, VOCAB, WINDOW, decoder_model

BUDGETS_MB = {"resident": 2048, "streaming": 1}
#: Prompt lengths: all longer than the sliding window, one row padded in every batch.
LENGTHS = [9, 5, 7]
NEW_TOKENS = 16


def _close(actual: list[torch.Tensor], expected: torch.Tensor) -> None:
    for out, row, n in zip(actual, expected, LENGTHS, strict=True):
        torch.testing.assert_close(out, row[:n], atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", list(BUDGETS_MB))
@pytest.mark.parametrize("kind", list(DECODERS))
async def test_decoder_family_matches_transformers(kind: str, mode: str, tmp_path: Path) -> None:
    model = decoder_model(kind)
    manifest = chunk_model(model, tmp_path, name=f"tiny-{kind}", max_chunk_mb=0.25)
    budget_mb = BUDGETS_MB[mode]
    engine = await StreamingEngine.open(str(tmp_path), memory_budget_mb=budget_mb, prefetch_count=1)
    try:
        assert manifest.architecture == kind
        assert engine.plan.mode == mode
        if mode == "streaming":
            assert manifest.total_bytes > budget_mb << 20
            assert len([c for c in manifest.chunks if c.rows]) >= 4
        assert min(LENGTHS) > WINDOW
        rows = id_rows(LENGTHS, vocab=VOCAB)
        ids, mask = padded(rows, engine.pad_id, left=False)

        hidden = await engine.run_async(
            "forward", [{"input_ids": r, "output": "hidden"} for r in rows], tensors=True
        )
        logits = await engine.run_async("forward", [{"input_ids": r} for r in rows], tensors=True)
        with torch.inference_mode():
            expected_hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
            expected_logits = model(input_ids=ids, attention_mask=mask).logits
        _close(hidden, expected_hidden)
        _close(logits, expected_logits)

        generated = await engine.run_async(
            "generate", [{"input_ids": r, "max_new_tokens": NEW_TOKENS} for r in rows]
        )
        reference = reference_generate(model, rows, NEW_TOKENS, engine.pad_id)
        assert [g["token_ids"] for g in generated] == reference
        assert engine.peak_materialized_bytes <= budget_mb << 20
    finally:
        engine.close()


def test_structure_is_read_from_the_model() -> None:
    """Block list, embeddings, head, rotary modules and tied weights come from the model."""
    from sw_core.engine.model.structure import describe

    qwen3 = describe(decoder_model("qwen3"))
    assert qwen3.stacks == ("model.layers",)
    assert (qwen3.input_embeddings, qwen3.head) == ("model.embed_tokens", "lm_head")
    assert qwen3.tied == {"lm_head.weight": "model.embed_tokens.weight"}
    assert qwen3.rotary == ("model.rotary_emb",)
    assert describe(decoder_model("qwen2")).tied == {}
    opt = describe(decoder_model("opt"))
    assert opt.final_norms == {"model.decoder.final_layer_norm": "model.decoder.layers"}
    assert opt.rotary == ()


async def test_opt_final_norm_is_scheduled_after_the_blocks(tmp_path: Path) -> None:
    """OPT registers its final norm before its layers; the prefetch schedule follows run order."""
    chunk_model(decoder_model("opt"), tmp_path, name="tiny-opt", max_chunk_mb=0)
    engine = await StreamingEngine.open(str(tmp_path), memory_budget_mb=2048)
    try:
        paths = [u.path for u in engine.runtime.units]
        assert paths.index("model.decoder.final_layer_norm") > paths.index("model.decoder.layers.2")
    finally:
        engine.close()


@pytest.mark.parametrize("mode", list(BUDGETS_MB))
@pytest.mark.parametrize("kind", ["roberta", "xlm-roberta", "mpnet", "distilbert"])
async def test_encoder_family_matches_transformers(kind: str, mode: str, tmp_path: Path) -> None:
    """Encoders: last hidden states within 1e-5, resident and streamed under 1 MiB."""
    from tests.support.st_zoo import encoder_model

    model = encoder_model(kind, 4 * VOCAB)  # hidden 32: a 2 MiB embedding matrix
    manifest = chunk_model(model, tmp_path, name=f"tiny-{kind}", max_chunk_mb=0.25)
    budget_mb = BUDGETS_MB[mode]
    engine = await StreamingEngine.open(str(tmp_path), memory_budget_mb=budget_mb, prefetch_count=1)
    try:
        assert engine.plan.mode == mode and engine.family == "encoder"
        if mode == "streaming":
            assert manifest.total_bytes > budget_mb << 20
        rows = id_rows(LENGTHS, vocab=4 * VOCAB)
        ids, mask = padded(rows, engine.pad_id, left=False)
        hidden = await engine.run_async(
            "forward", [{"input_ids": r, "output": "hidden"} for r in rows], tensors=True
        )
        with torch.inference_mode():
            expected = model(input_ids=ids, attention_mask=mask).last_hidden_state
        _close(hidden, expected)
        assert engine.peak_materialized_bytes <= budget_mb << 20
    finally:
        engine.close()

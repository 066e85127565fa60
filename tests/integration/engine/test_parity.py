"""Parity: models run block by block from chunks in the Redis cache match transformers in memory.

Each random-init family runs twice: resident (everything fits) and streamed under a 2 MiB
budget smaller than the model, where the 2 MiB embedding matrix is never whole (four row
shards, embedding lookup and tied LM head computed shard by shard). Hidden states and
logits must agree within 1e-5 and greedy generation of 32 tokens token for token.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch.nn import functional

from sw_core.cache import ChunkCache
from sw_core.engine import StreamingEngine
from tests.support.engine import cached_source, chunk_cache, id_rows, padded, reference_generate
from tests.support.models import KINDS, ChunkedModel, chunk_small

BUDGETS_MB = {"resident": 2048, "streaming": 2}
LENGTHS = [9, 5, 7]


@pytest.fixture
def cache(redis_url: str) -> Iterator[ChunkCache]:
    cache = chunk_cache(redis_url)
    yield cache
    cache.close()


def _close(actual: list[list[float]], expected: torch.Tensor) -> None:
    torch.testing.assert_close(torch.tensor(actual), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", list(BUDGETS_MB))
@pytest.mark.parametrize("kind", KINDS)
async def test_random_model_matches_transformers(
    kind: str, mode: str, tmp_path: Path, cache: ChunkCache
) -> None:
    model, manifest = chunk_small(kind, tmp_path)
    source = cached_source(tmp_path, manifest, cache)
    budget_mb = BUDGETS_MB[mode]
    engine = await StreamingEngine.open(source, memory_budget_mb=budget_mb, prefetch_count=2)
    try:
        assert engine.plan.mode == mode
        if mode == "streaming":
            assert any(c.rows for c in manifest.chunks) and not engine.plan.merged
        rows = id_rows(LENGTHS)
        pad_id = engine.pad_id
        ids, mask = padded(rows, pad_id, left=False)
        decoder_rows = id_rows([4, 6, 3], seed=2)
        dec_ids, dec_mask = padded(decoder_rows, pad_id, left=False)
        extra = [{"decoder_input_ids": d} for d in decoder_rows] if kind == "t5" else [{}] * 3

        # Hidden states.
        hidden = await engine.run_async(
            "forward",
            [{"input_ids": r, "output": "hidden", **e} for r, e in zip(rows, extra, strict=True)],
        )
        with torch.inference_mode():
            if kind == "bert":
                expected = model(input_ids=ids, attention_mask=mask).last_hidden_state
            elif kind == "t5":
                encoded = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
                expected = model.decoder(
                    input_ids=dec_ids,
                    attention_mask=dec_mask,
                    encoder_hidden_states=encoded,
                    encoder_attention_mask=mask,
                ).last_hidden_state
            else:
                expected = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        lengths = [len(d) for d in decoder_rows] if kind == "t5" else LENGTHS
        for row, n, out in zip(expected, lengths, hidden, strict=True):
            _close(out, row[:n])

        if kind != "bert":
            # Logits.
            logits = await engine.run_async(
                "forward", [{"input_ids": r, **e} for r, e in zip(rows, extra, strict=True)]
            )
            kwargs = {"decoder_input_ids": dec_ids, "decoder_attention_mask": dec_mask}
            with torch.inference_mode():
                expected = model(
                    input_ids=ids, attention_mask=mask, **(kwargs if kind == "t5" else {})
                ).logits
            for row, n, out in zip(expected, lengths, logits, strict=True):
                _close(out, row[:n])

            # Greedy generation, 32 new tokens, the three prompts batched together.
            generated = await engine.run_async(
                "generate", [{"input_ids": r, "max_new_tokens": 32} for r in rows]
            )
            reference = reference_generate(model, rows, 32, pad_id)
            assert [g["token_ids"] for g in generated] == reference
            for g, ref in zip(generated, reference, strict=True):
                assert g["finish_reason"] == ("length" if len(ref) == 32 else "eos")

        # Every chunk came from the Redis cache; the budget held.
        assert source.cache_misses == 0 and source.cache_hits > 0
        assert engine.peak_materialized_bytes <= budget_mb << 20
    finally:
        engine.close()


def _reference_embeddings(chunked: ChunkedModel, texts: list[str]) -> torch.Tensor:
    batch = chunked.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = chunked.model(**batch).last_hidden_state
    weights = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    return functional.normalize(pooled, p=2, dim=1)


TEXTS = [
    "The cat sits on the mat.",
    "Streaming weights layer by layer keeps memory low.",
    "A completely unrelated sentence about mountains, rivers and the sea!",
    "hi",
]


@pytest.mark.parametrize("budget_mb", [2048, 40])
async def test_minilm_embeddings_match_sentence_transformers_pooling(
    minilm_chunked: ChunkedModel, cache: ChunkCache, budget_mb: int
) -> None:
    source = cached_source(minilm_chunked.folder, minilm_chunked.manifest, cache)
    engine = await StreamingEngine.open(source, memory_budget_mb=budget_mb)
    try:
        assert engine.plan.mode == ("resident" if budget_mb == 2048 else "streaming")
        vectors = await engine.run_async("embed", [{"text": t} for t in TEXTS])
        actual = torch.tensor(vectors)
        cosine = functional.cosine_similarity(actual, _reference_embeddings(minilm_chunked, TEXTS))
        assert bool((cosine >= 0.9999).all()), cosine.tolist()
        assert torch.allclose(actual.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5)
        assert source.cache_misses == 0
        assert engine.peak_materialized_bytes <= budget_mb << 20
    finally:
        engine.close()

"""Packed weights (``sw chunk --quantize int4|int8``) on the random models of every family.

The reference is the *dequantized model*: the chunk set assembled back with every packed
weight widened to float32 (``assemble_model``), run by transformers in memory. Each family
runs resident and streamed under a 1 MiB budget (row shards, blocks and experts fetched as
they run):

- ``SW_COMPUTE_DTYPE=float32`` widens every packed weight on arrival: hidden states and
  logits within 1e-5 of the reference (measured: 0.0) and batched greedy generation token
  for token equal to transformers' ``generate``;
- ``SW_COMPUTE_DTYPE=bfloat16`` computes with torch's packed kernels (bfloat16 activations):
  logits within a relative error (Frobenius norm) of :data:`BF16_LOGITS_REL` of the
  reference (measured 0.006-0.016 on these models), and batched generation token for token
  equal to the same engine generating each row alone (random models have flat logits, so
  bfloat16 rounding may pick another token than the float32 reference).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sw_core.chunks.assemble import assemble_model
from sw_core.chunks.chunker import chunk_model
from sw_core.chunks.manifest import PACKED_FORMAT_VERSION, Manifest
from sw_core.engine import StreamingEngine
from tests.support.engine import id_rows, padded, reference_generate
from tests.support.family_zoo import DECODERS, MOE, VOCAB, decoder_model, moe_model
from tests.support.models import VOCAB as SMALL_VOCAB
from tests.support.models import small_model

BUDGETS_MB = {"resident": 2048, "streaming": 1}
LENGTHS = [9, 5, 7]
NEW_TOKENS = 8
#: Stated tolerance of the packed (bfloat16) path against the float32 dequantized model.
BF16_LOGITS_REL = 2.5e-2


def _rel(actual: list[torch.Tensor], expected: torch.Tensor) -> float:
    return max(
        float((a.float() - e[:n]).norm() / e[:n].norm())
        for a, e, n in zip(actual, expected, LENGTHS, strict=True)
    )


async def _check(
    model: torch.nn.Module, folder: Path, quantize: str, mode: str, vocab: int
) -> tuple[Manifest, frozenset[str]]:
    """Both compute dtypes against the dequantized model; returns the manifest and the
    tensors the bfloat16 engine kept packed."""
    manifest = chunk_model(model, folder, name="packed", max_chunk_mb=0.25, quantize=quantize)
    assert manifest.packed and manifest.format_version == PACKED_FORMAT_VERSION
    reference = assemble_model(folder)
    rows = id_rows(LENGTHS, vocab=vocab)
    budget = BUDGETS_MB[mode]
    packed: frozenset[str] = frozenset()
    for dtype in ("float32", "bfloat16"):
        engine = await StreamingEngine.open(
            str(folder), memory_budget_mb=budget, prefetch_count=1, compute_dtype=dtype
        )
        try:
            assert engine.plan.mode == mode
            packed = engine.skeleton.kept_packed
            assert (len(packed) > 0) == (dtype == "bfloat16")
            # int4 blocks computed from their stored tables are read without exact scales
            views = {c.name for c in engine.manifest.chunks if c.is_prefix}
            assert bool(views) == (dtype == "bfloat16" and quantize == "int4")
            assert all(manifest.chunk(n).role != "embeddings" for n in views)
            ids, mask = padded(rows, engine.pad_id, left=False)
            logits = await engine.run_async(
                "forward", [{"input_ids": r} for r in rows], tensors=True
            )
            with torch.inference_mode():
                expected = reference(input_ids=ids, attention_mask=mask).logits
            requests = [{"input_ids": r, "max_new_tokens": NEW_TOKENS} for r in rows]
            batched = [g["token_ids"] for g in await engine.run_async("generate", requests)]
            if dtype == "float32":
                for out, row, n in zip(logits, expected, LENGTHS, strict=True):
                    torch.testing.assert_close(out, row[:n], atol=1e-5, rtol=0)
                assert batched == reference_generate(reference, rows, NEW_TOKENS, engine.pad_id)
            else:
                assert _rel(logits, expected) < BF16_LOGITS_REL
                alone = [
                    (await engine.run_async("generate", [r]))[0]["token_ids"] for r in requests
                ]
                assert batched == alone
            assert engine.peak_materialized_bytes <= budget << 20
        finally:
            engine.close()
    return manifest, packed


@pytest.mark.parametrize("mode", list(BUDGETS_MB))
@pytest.mark.parametrize("kind", list(DECODERS))
async def test_int4_decoders_match_the_dequantized_model(
    kind: str, mode: str, tmp_path: Path
) -> None:
    await _check(decoder_model(kind), tmp_path, "int4", mode, VOCAB)


@pytest.mark.parametrize("kind", ["qwen2", "phi3", "gemma2"])
async def test_int8_decoders_match_the_dequantized_model(kind: str, tmp_path: Path) -> None:
    await _check(decoder_model(kind), tmp_path, "int8", "streaming", VOCAB)


@pytest.mark.parametrize("kind", list(MOE))
async def test_packed_experts_match_the_dequantized_model(kind: str, tmp_path: Path) -> None:
    """One chunk per expert, each packed; only routed experts are fetched."""
    manifest, packed = await _check(moe_model(kind), tmp_path, "int4", "streaming", VOCAB)
    experts = {t for c in manifest.by_role("expert") for t in c.tensors}
    assert experts and experts <= set(manifest.packed) and experts <= packed


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
async def test_small_families_match_the_dequantized_model(kind: str, tmp_path: Path) -> None:
    """GPT-2's Conv1D weights are packed transposed; LLaMA with a tied head."""
    await _check(small_model(kind), tmp_path, "int4", "streaming", SMALL_VOCAB)

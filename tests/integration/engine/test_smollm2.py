"""SmolLM2-135M-Instruct (538 MB fp32) through the engine: parity from the Redis cache, and
the same tokens under a 64 MiB budget -- smaller than its 113 MB tied embedding matrix --
with the engine's peak and the process's peak RSS both measured."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from sw_core.cache import ChunkCache
from sw_core.engine import StreamingEngine
from tests.support.engine import cached_source, chunk_cache, padded, reference_generate
from tests.support.models import ChunkedModel

pytestmark = pytest.mark.slow

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a hash function is.",
]
NEW_TOKENS = 32
BUDGET_MB = 64
#: Allowed growth of peak RSS beyond the weight budget (activations, KV cache, allocator).
RSS_SLACK_MB = 128


def _chat_rows(tokenizer: Any) -> list[list[int]]:
    rows = []
    for prompt in PROMPTS:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        rows.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return rows


@pytest.fixture(scope="module")
def reference(smollm2_chunked: ChunkedModel) -> dict[str, Any]:
    """transformers with all weights in memory: greedy tokens and logits for the prompts."""
    model, tokenizer = smollm2_chunked.model, smollm2_chunked.tokenizer
    rows = _chat_rows(tokenizer)
    pad_id = model.generation_config.pad_token_id
    tokens = reference_generate(model, rows, NEW_TOKENS, pad_id)
    ids, mask = padded(rows, pad_id, left=False)
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask).logits
    return {"rows": rows, "tokens": tokens, "logits": logits}


@pytest.fixture
def cache(redis_url: str) -> Iterator[ChunkCache]:
    cache = chunk_cache(redis_url, budget_mb=1024)
    yield cache
    cache.close()


async def test_smollm2_from_redis_matches_transformers(
    smollm2_chunked: ChunkedModel, reference: dict[str, Any], cache: ChunkCache
) -> None:
    source = cached_source(smollm2_chunked.folder, smollm2_chunked.manifest, cache)
    engine = await StreamingEngine.open(source, memory_budget_mb=2048)
    try:
        assert engine.plan.mode == "resident"
        # Text in, chat template applied by the engine: the same prompt tokens as the reference.
        results = await engine.run_async(
            "generate", [{"text": p, "max_new_tokens": NEW_TOKENS} for p in PROMPTS]
        )
        assert [r["prompt_tokens"] for r in results] == [len(r) for r in reference["rows"]]
        assert [r["token_ids"] for r in results] == reference["tokens"]
        # Each row stops on its own: the short answer ends at EOS, the others run to the limit.
        reasons = [r["finish_reason"] for r in results]
        assert "eos" in reasons and "length" in reasons
        assert results[0]["text"] == "The capital of France is Paris."

        logits = await engine.run_async("forward", [{"input_ids": r} for r in reference["rows"]])
        for out, expected, row in zip(logits, reference["logits"], reference["rows"], strict=True):
            torch.testing.assert_close(torch.tensor(out), expected[: len(row)], atol=1e-5, rtol=0)
        assert source.cache_misses == 0
    finally:
        engine.close()


async def test_smollm2_in_64_mib_generates_the_same_tokens(
    smollm2_chunked: ChunkedModel, reference: dict[str, Any]
) -> None:
    engine = await StreamingEngine.open(
        str(smollm2_chunked.folder), memory_budget_mb=BUDGET_MB, prefetch_count=2
    )
    try:
        assert engine.plan.mode == "streaming" and not engine.plan.merged
        results = await engine.run_async(
            "generate", [{"text": p, "max_new_tokens": NEW_TOKENS} for p in PROMPTS]
        )
        assert [r["token_ids"] for r in results] == reference["tokens"]
        # The 113 MB embedding matrix was never whole: every reservation, in flight
        # included, stayed within the budget.
        assert engine.peak_materialized_bytes <= BUDGET_MB << 20
        info = engine.cache_info()
        assert info["prefetched"] > 0 and info["peak_memory_mb"] <= BUDGET_MB
    finally:
        engine.close()


_RSS_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os, resource, sys
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch, transformers, accelerate
    import transformers.models.llama.modeling_llama
    from transformers import AutoTokenizer
    from sw_core.engine import StreamingEngine

    folder, mode, budget, prompts, new_tokens = sys.argv[1:6]
    out = {}
    if mode == "baseline":
        AutoTokenizer.from_pretrained(folder)
    else:
        async def main():
            engine = await StreamingEngine.open(folder, memory_budget_mb=int(budget))
            reqs = [{"text": p, "max_new_tokens": int(new_tokens)} for p in json.loads(prompts)]
            results = await engine.run_async("generate", reqs)
            out["tokens"] = [r["token_ids"] for r in results]
            out["peak_bytes"] = engine.peak_materialized_bytes
            engine.close()
        asyncio.run(main())
    out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open("/proc/self/status") as status:
        hwm = next(line for line in status if line.startswith("VmHWM:"))
    out["hwm_mb"] = int(hwm.split()[1]) / 1024
    print("RESULT " + json.dumps(out))
    """
)


def _measure(folder: Path, mode: str, new_tokens: int) -> dict[str, Any]:
    args = [str(folder), mode, str(BUDGET_MB), json.dumps(PROMPTS), str(new_tokens)]
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[3],
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def test_smollm2_peak_rss_grows_by_at_most_budget_plus_128_mib(
    smollm2_chunked: ChunkedModel, reference: dict[str, Any]
) -> None:
    new_tokens = 8
    baseline = _measure(smollm2_chunked.folder, "baseline", new_tokens)
    streamed = _measure(smollm2_chunked.folder, "engine", new_tokens)
    assert streamed["tokens"] == [t[:new_tokens] for t in reference["tokens"]]
    assert streamed["peak_bytes"] <= BUDGET_MB << 20
    # Peak RSS of each process image: VmHWM. (A child's ru_maxrss also counts the pages of
    # the image it was exec'ed from -- this 2 GB test process -- so it cannot tell them apart.)
    growth_mb = streamed["hwm_mb"] - baseline["hwm_mb"]
    print(
        f"peak RSS (VmHWM): baseline {baseline['hwm_mb']:.0f} MiB, engine {streamed['hwm_mb']:.0f}"
    )
    assert growth_mb <= BUDGET_MB + RSS_SLACK_MB, (
        f"peak RSS grew by {growth_mb:.0f} MiB (> {BUDGET_MB} + {RSS_SLACK_MB})"
    )

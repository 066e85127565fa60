"""Case c of the engine benchmarks: batched generation against one request at a time.

SmolLM2-135M-Instruct (bundled) under ``memory_budget_mb`` = 25 % of its weights (blocks
stream through the budget at every decode step), chunks in the Redis chunk cache of a
private Redis: 16 greedy requests in one batch vs the same 16 one after the other. The
one-by-one pass is long, so each round is: batched, 8 requests one by one, batched, the
other 8, batched (every batched run sits next to one-by-one work). Both sides get the same
warm-up (one short request). Goal: throughput >= 14x (issue 16; 8x before).

Correctness is asserted: the batched tokens equal the one-by-one tokens and transformers'
own greedy ``generate``.

Usage: ``.venv/bin/python bench/batching.py [--quick] [--rounds 2] [--new-tokens 16]``
(about 3 minutes on 2 cores; ``--quick``: one round of 6 new tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from engine import put_chunks, redis_cache  # bench/, beside this script
from figures import Figure, Profile, print_figures
from prompts import PROMPTS
from smollm2 import chunk_set, load
from timing import Case, Timings

from sw_core.cache import ChunkCache
from sw_core.engine import CachedChunkSource, StreamingEngine
from sw_core.storage import FilesystemBackend


async def bench_smollm2(
    root: Path, cache: ChunkCache, rounds: int, new_tokens: int
) -> dict[str, Any]:
    """Case c; the medians (s), tokens and bytes streamed."""
    model, tokenizer = load()
    folder, manifest = chunk_set(root / "smollm2", loaded=(model, tokenizer))
    put_chunks(cache, folder, manifest)
    weights = sum(c.size_bytes for c in manifest.chunks)
    budget_mb = round(weights / 4 / 2**20)
    requests = [{"text": p, "max_new_tokens": new_tokens} for p in PROMPTS]
    reference = reference_tokens(model, tokenizer, new_tokens)
    del model

    source = CachedChunkSource(cache, FilesystemBackend(folder))
    engine = await StreamingEngine.open(source, memory_budget_mb=budget_mb)
    timings = Timings(cache.redis)
    serial: list[list[int]] = []
    batched: list[list[int]] = []
    streamed = {"batched": 0, "one by one": 0}
    try:
        plan = engine.plan
        assert plan.mode == "streaming", plan.describe()
        print(
            f"SmolLM2 ({weights / 2**20:.0f} MiB in {len(manifest.chunks)} chunks), budget "
            f"{budget_mb} MiB (25 %): {plan.describe()}; prefetch_count "
            f"{engine.settings.prefetch_count}; {new_tokens} new tokens per request"
        )

        async def run_batched() -> None:
            engine.residency.reset_stats()
            results = await engine.run_async("generate", requests)
            streamed["batched"] += engine.residency.stats.loaded_bytes
            batched[:] = [r["token_ids"] for r in results]

        def one_by_one(part: list[dict[str, Any]]) -> Case:
            async def run() -> None:
                for request in part:
                    engine.residency.reset_stats()
                    [result] = await engine.run_async("generate", [request])
                    streamed["one by one"] += engine.residency.stats.loaded_bytes
                    serial.append(result["token_ids"])

            return run

        # the same warm-up for both sides: one short request (the kept chunks, threads)
        await engine.run_async("generate", [dict(requests[0], max_new_tokens=2)])
        half = len(requests) // 2
        for _ in range(rounds):
            serial.clear()
            await timings.time("16 batched", run_batched)
            await timings.time("one by one, first 8", one_by_one(requests[:half]))
            await timings.time("16 batched", run_batched)
            await timings.time("one by one, last 8", one_by_one(requests[half:]))
            await timings.time("16 batched", run_batched)
            assert batched == serial, "batched tokens differ from one by one"
            assert batched == reference, "engine tokens differ from transformers' generate"
        assert source.cache_misses == 0, "a chunk did not come from the Redis cache"
    finally:
        await engine.aclose()

    n_tokens = sum(len(t) for t in batched)
    print(f"  check: batched == one by one == transformers generate ({n_tokens} tokens)")
    serial_runs = [
        a + b
        for a, b in zip(
            timings.wall["one by one, first 8"], timings.wall["one by one, last 8"], strict=True
        )
    ]
    timings.wall["16 one by one"] = serial_runs
    for side, name, runs in (
        ("batched", "16 batched", 3 * rounds),
        ("one by one", "16 one by one", rounds),
    ):
        rate = n_tokens / timings.median_s(name)
        per_run_mib = streamed[side] / runs / 2**20
        print(
            f"  {name:38s} {timings.median_s(name) * 1e3:9.0f} ms (n={len(timings.wall[name])})"
            f"  {rate:6.1f} tokens/s, {per_run_mib:6.0f} MiB streamed per run"
        )
    return {
        "batched_s": timings.median_s("16 batched"),
        "serial_s": timings.median_s("16 one by one"),
        "tokens": n_tokens,
        "rounds": rounds,
        "new_tokens": new_tokens,
    }


def reference_tokens(model: Any, tokenizer: Any, new_tokens: int) -> list[list[int]]:
    """transformers' greedy ``generate`` per prompt (chat template), cut after EOS."""
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    result = []
    for prompt in PROMPTS:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            out = model.generate(input_ids=ids, max_new_tokens=new_tokens, do_sample=False)
        row = out[0, ids.shape[1] :].tolist()
        cut = next((i + 1 for i, t in enumerate(row) if t in eos_ids), len(row))
        result.append(row[:cut])
    return result


def to_figures(m: dict[str, Any]) -> list[Figure]:
    how = (
        f"16 greedy requests of up to {m['new_tokens']} new tokens, SmolLM2 at a 25 % budget; "
        f"batched: median of {3 * m['rounds']} runs, one by one: of {m['rounds']}"
    )
    return [
        Figure(
            "batching.c_batched_vs_serial",
            m["serial_s"] / m["batched_s"],
            "x",
            "(c) 16 requests batched / one by one, throughput",
            goal=">= 14",
            note=how,
        ),
        Figure(
            "batching.c_batched_tokens_s",
            m["tokens"] / m["batched_s"],
            "tokens/s",
            "(c) 16 requests batched, tokens/s",
        ),
    ]


async def measure(rounds: int, new_tokens: int) -> dict[str, Any]:
    async with redis_cache() as (root, cache):
        return await bench_smollm2(root, cache, rounds, new_tokens)


def figures(profile: Profile) -> list[Figure]:
    """Figures for ``bench/run.py``."""
    return to_figures(asyncio.run(measure(profile.pick(1, 2), profile.pick(6, 16))))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round of 6 new tokens")
    parser.add_argument("--rounds", type=int, help="rounds (3 batched runs each; default 2)")
    parser.add_argument("--new-tokens", type=int, help="max_new_tokens (default 16, quick 6)")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 2)
    new_tokens = args.new_tokens or (6 if args.quick else 16)
    print_figures(to_figures(asyncio.run(measure(rounds, new_tokens))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

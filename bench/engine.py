"""The streaming engine against plain transformers in memory, measured side by side.

Starts its own Redis (``sw_core.redis_server``) holding a :class:`~sw_core.cache.ChunkCache`,
chunks the two bundled models into a temporary folder, and times, in interleaved
repetitions (the order rotates each round; medians):

a. **resident** -- all-MiniLM-L6-v2, a batch of 8 x 32 tokens: ``engine.run_async("forward")``
   with every chunk resident (budget 2048 MiB, warmed up) vs the transformers model in
   memory. Goal: ratio <= 1.05.
b. **cold** -- the same batch with every chunk coming from the Redis chunk cache
   (``clear_cache()`` before each run: a worker that holds nothing), plus, in the same
   rounds, *fetch alone* (every chunk fetched, sha256-verified and deserialized one after
   the other through the same source, no compute) and *compute alone* (the resident
   forward of a). Overlap efficiency = cold wall / max(fetch, compute). Goal: <= 1.2.
c. **batching** -- SmolLM2-135M-Instruct under ``memory_budget_mb`` = 25 % of its weights
   (so blocks stream through the budget on every decode step), chunks in the Redis cache:
   16 greedy chat requests of ``--new-tokens`` tokens in one batch vs the same 16 one after
   the other. Goal: throughput ratio >= 8.

Correctness is asserted on every side: engine outputs equal (a, b: max |diff| <= 1e-5) the
in-memory model, and (c) the batched tokens equal the one-by-one tokens and transformers'
own greedy ``generate``.

Usage: ``.venv/bin/python bench/engine.py [--quick] [--only a|b|c] [--reps 9]`` (the full
run takes about 4-5 minutes on 2 cores; ``--quick`` about 1.5).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import redis
import torch

from sw_core.bundled import minilm_path, smollm2_gguf_path
from sw_core.cache import ChunkCache
from sw_core.chunker import chunk_model
from sw_core.engine import CachedChunkSource, StreamingEngine
from sw_core.keys import Keys
from sw_core.manifest import Manifest
from sw_core.redis_server import RedisServer
from sw_core.storage import FilesystemBackend

Case = Callable[[], Awaitable[Any]]

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a hash function is.",
    "Name three primary colors.",
    "How many legs does a spider have?",
    "Give me a synonym for happy.",
    "What is 12 times 12?",
    "Translate 'good morning' into Spanish.",
    "What does a compiler do?",
    "Why is the sky blue?",
    "Suggest a name for a pet cat.",
    "What is the boiling point of water?",
    "List two uses of copper.",
    "Who wrote Romeo and Juliet?",
    "What is a prime number?",
    "Describe a rainbow in one sentence.",
]


# --------------------------------------------------------------------------- helpers
async def interleaved(cases: dict[str, Case], reps: int) -> dict[str, list[float]]:
    """Run every case once per round, rotating the order; seconds per case per round."""
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            started = time.perf_counter()
            await cases[name]()
            times[name].append(time.perf_counter() - started)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def row(name: str, values: list[float], note: str = "") -> str:
    ms = [v * 1e3 for v in values]
    return (
        f"  {name:40s} {median(ms):9.1f} ms  (min {min(ms):7.1f}, max {max(ms):7.1f}, "
        f"n={len(ms)}){note}"
    )


def verdict(ratio: float, goal: float, *, at_most: bool) -> str:
    met = ratio <= goal if at_most else ratio >= goal
    sign = "<=" if at_most else ">="
    return f"goal {sign} {goal:g}: {'met' if met else 'NOT met'}"


def put_chunks(cache: ChunkCache, folder: Path, manifest: Manifest) -> None:
    for chunk in manifest.chunks:
        cache.put(chunk.sha256, (folder / chunk.file).read_bytes())


async def fetch_alone(engine: StreamingEngine, source: CachedChunkSource) -> None:
    """Every chunk of the model fetched, verified and deserialized, one after the other."""
    skeleton = engine.skeleton
    for chunk in engine.manifest.chunks:
        data = await source.fetch(chunk)
        await asyncio.to_thread(skeleton.deserialize, chunk, data)


# --------------------------------------------------------------------------- a + b
async def bench_minilm(root: Path, cache: ChunkCache, reps: int, only: str | None) -> None:
    from transformers import AutoModel

    source_dir = minilm_path()
    folder = root / "minilm"
    manifest = chunk_model(source_dir, folder, name="minilm")
    put_chunks(cache, folder, manifest)
    model = AutoModel.from_pretrained(source_dir).eval()
    vocab = int(model.config.vocab_size)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (8, 32), generator=generator)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    mask = torch.ones_like(ids)
    requests = [{"input_ids": r, "output": "hidden"} for r in ids.tolist()]
    weights_mb = sum(c.size_bytes for c in manifest.chunks) / 2**20

    resident = await StreamingEngine.open(str(folder), memory_budget_mb=2048)
    cold_source = CachedChunkSource(cache, FilesystemBackend(folder))
    cold = await StreamingEngine.open(cold_source, memory_budget_mb=2048)
    try:
        assert resident.plan.mode == "resident" and cold.plan.mode == "resident"
        await resident.warmup()

        def in_memory() -> torch.Tensor:
            with torch.inference_mode():
                return model(input_ids=ids, attention_mask=mask).last_hidden_state

        async def engine_resident() -> list[torch.Tensor]:
            return await resident.run_async("forward", requests, tensors=True)

        async def engine_cold() -> list[torch.Tensor]:
            cold.clear_cache()
            cold.residency.reset_stats()
            out = await cold.run_async("forward", requests, tensors=True)
            assert cold.residency.stats.loads == len(manifest.chunks)
            return out

        async def memory_case() -> torch.Tensor:
            return in_memory()

        expected = in_memory()
        for name, run in (("resident", engine_resident), ("cold", engine_cold)):
            got = torch.stack(await run())
            diff = float((got - expected).abs().max())
            assert diff <= 1e-5, f"engine {name} differs from transformers by {diff}"
            print(f"  check: engine {name} output == transformers (max |diff| {diff:.1e})")
        await fetch_alone(cold, cold_source)
        misses = cold_source.cache_misses

        cases: dict[str, Case] = {"transformers in memory": memory_case}
        if only in (None, "a", "b"):
            cases["engine, resident"] = engine_resident
        if only in (None, "b"):
            cases["engine, cold (every chunk from Redis)"] = engine_cold
            cases["fetch alone (fetch+verify+deserialize)"] = lambda: fetch_alone(cold, cold_source)
        times = await interleaved(cases, reps)
        assert cold_source.cache_misses == misses, "a chunk did not come from the Redis cache"
    finally:
        await resident.aclose()
        await cold.aclose()

    mem = median(times["transformers in memory"])
    print(f"MiniLM ({weights_mb:.1f} MB in {len(manifest.chunks)} chunks), batch 8 x 32 tokens")
    for name, values in times.items():
        print(row(name, values))
    res = median(times["engine, resident"])
    ratio_a = res / mem
    if only in (None, "a"):
        print(f"(a) resident / in memory = {ratio_a:.3f}  ({verdict(ratio_a, 1.05, at_most=True)})")
    if only in (None, "b"):
        wall = median(times["engine, cold (every chunk from Redis)"])
        fetch = median(times["fetch alone (fetch+verify+deserialize)"])
        overlap = wall / max(fetch, res)
        print(f"(b) cold / in memory = {wall / mem:.2f}")
        print(
            f"(b) overlap efficiency = cold wall / max(fetch {fetch * 1e3:.1f} ms, compute "
            f"{res * 1e3:.1f} ms) = {overlap:.2f}  ({verdict(overlap, 1.2, at_most=True)}); "
            f"fetch + compute = {(fetch + res) * 1e3:.1f} ms"
        )


# --------------------------------------------------------------------------- c
async def bench_smollm2(root: Path, cache: ChunkCache, reps: int, new_tokens: int) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    folder = root / "smollm2"
    manifest = chunk_model(model, folder, name="smollm2", tokenizer=tokenizer)
    put_chunks(cache, folder, manifest)
    weights = sum(c.size_bytes for c in manifest.chunks)
    budget_mb = round(weights / 4 / 2**20)
    requests = [{"text": p, "max_new_tokens": new_tokens} for p in PROMPTS]
    reference = reference_tokens(model, tokenizer, new_tokens)
    del model

    source = CachedChunkSource(cache, FilesystemBackend(folder))
    engine = await StreamingEngine.open(source, memory_budget_mb=budget_mb)
    try:
        plan = engine.plan
        assert plan.mode == "streaming", plan.describe()
        print(
            f"SmolLM2 ({weights / 2**20:.0f} MiB in {len(manifest.chunks)} chunks), budget "
            f"{budget_mb} MiB (25 %): {plan.describe()}; prefetch_count "
            f"{engine.settings.prefetch_count}"
        )
        out: dict[str, list[list[int]]] = {}

        async def batched() -> None:
            results = await engine.run_async("generate", requests)
            out["batched"] = [r["token_ids"] for r in results]

        async def one_by_one() -> None:
            tokens = []
            for request in requests:
                [result] = await engine.run_async("generate", [request])
                tokens.append(result["token_ids"])
            out["one by one"] = tokens

        times = await interleaved({"16 batched": batched, "16 one by one": one_by_one}, reps)
        assert out["batched"] == out["one by one"], "batched tokens differ from one by one"
        assert out["batched"] == reference, "engine tokens differ from transformers' generate"
        assert source.cache_misses == 0, "a chunk did not come from the Redis cache"
    finally:
        await engine.aclose()
    n_tokens = sum(len(t) for t in out["batched"])
    print(f"  check: batched == one by one == transformers generate ({n_tokens} tokens)")
    for name, values in times.items():
        rate = n_tokens / median(values)
        print(row(name, values, f"  {rate:6.1f} tokens/s"))
    ratio = median(times["16 one by one"]) / median(times["16 batched"])
    print(
        f"(c) batched / one by one throughput = {ratio:.1f}x  ({verdict(ratio, 8, at_most=False)})"
    )


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
        row_ids = out[0, ids.shape[1] :].tolist()
        cut = next((i + 1 for i, t in enumerate(row_ids) if t in eos_ids), len(row_ids))
        result.append(row_ids[:cut])
    return result


# --------------------------------------------------------------------------- main
async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="sw-bench-engine-") as tmp, RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        cache = ChunkCache(client, keys=Keys("bench"), cache_size_bytes=2048 << 20)
        try:
            if args.only in (None, "a", "b"):
                await bench_minilm(Path(tmp), cache, args.reps, args.only)
            if args.only in (None, "c"):
                await bench_smollm2(Path(tmp), cache, args.reps_c, args.new_tokens)
        finally:
            cache.close()
            client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--only", choices=["a", "b", "c"], help="run one part only")
    parser.add_argument("--reps", type=int, help="rounds for a and b (default 9, quick 5)")
    parser.add_argument("--reps-c", type=int, help="rounds for c (default 2, quick 1)")
    parser.add_argument("--new-tokens", type=int, default=16, help="max_new_tokens in c")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    args.reps = args.reps or (5 if args.quick else 9)
    args.reps_c = args.reps_c or (1 if args.quick else 2)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op / "
        f"{torch.get_num_interop_threads()} inter-op threads, {os.cpu_count()} CPUs; "
        f"rounds: a/b {args.reps}, c {args.reps_c}"
    )
    started = time.perf_counter()
    asyncio.run(main_async(args))
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

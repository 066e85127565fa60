"""Cases d and e of ``bench/engine.py``: one streamed SmolLM2 request, as a user feels it.

d. **streamed generation** -- SmolLM2-135M-Instruct, the demo's chat prompt, 16 greedy new
   tokens, one request: the engine at ``memory_budget_mb`` = 25 % of the float32 weights with
   every chunk in the Redis chunk cache (BLAKE3-verified reads into reused buffers) vs
   transformers' ``generate`` with every weight in memory. Goal: <= 2.5x.
e. **bfloat16 storage** -- the same request from a chunk set written with ``sw chunk --dtype
   bfloat16``, same budget, vs the float32 chunk set, computed in float32 (the default on
   CPU, ``SW_COMPUTE_DTYPE=auto``) and in bfloat16 (``SW_COMPUTE_DTYPE=bfloat16``: nothing is
   widened, and the budget then keeps twice as many weights). Goal: wall time per token
   <= 0.7x; greedy tokens compared with the float32 chunk set on the demo's three questions.
   transformers in memory in bfloat16 is timed too: the in-memory peer of bfloat16 math.

Rounds interleave the three sides (order rotating). For each side the run also reports the
process's CPU seconds, Redis's CPU seconds and minor page faults per run, and the bytes
streamed per generated token.
"""

from __future__ import annotations

import asyncio
import copy
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from figures import Figure, Profile  # bench/, beside this script
from smollm2 import chunk_set, load

from sw_core.cache import ChunkCache
from sw_core.engine import CachedChunkSource, StreamingEngine
from sw_core.local.demo import QUESTIONS
from sw_core.storage import FilesystemBackend

MEMORY = "transformers in memory"
MEMORY_BF16 = "transformers in memory, bf16"
F32 = "engine, float32 chunks"
BF16 = "engine, bf16 chunks"
BF16_BF16 = "engine, bf16 chunks, bf16 math"
#: Engine sides: chunk dtype (None: float32) and SW_COMPUTE_DTYPE.
ENGINES = {F32: (None, "auto"), BF16: ("bfloat16", "auto"), BF16_BF16: ("bfloat16", "bfloat16")}


def _minflt() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _redis_cpu_s(cache: ChunkCache) -> float:
    info = cache.redis.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _chat_ids(tokenizer: Any, prompt: str) -> torch.Tensor:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    return tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]


def _in_memory(model: Any, ids: torch.Tensor, new_tokens: int) -> list[int]:
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, max_new_tokens=new_tokens, do_sample=False)
    row = out[0, ids.shape[1] :].tolist()
    cut = next((i + 1 for i, t in enumerate(row) if t in eos_ids), len(row))
    return row[:cut]


async def _open_engines(
    root: Path, cache: ChunkCache, model: Any, tokenizer: Any
) -> tuple[dict[str, StreamingEngine], int]:
    """The engine sides (:data:`ENGINES`), each at 25 % of the float32 weights; and that size."""
    engines: dict[str, StreamingEngine] = {}
    filled: set[Path] = set()
    weights = 0
    for name, (dtype, compute) in ENGINES.items():
        wanted = root / f"smollm2-{dtype or 'float32'}"
        folder, manifest = chunk_set(wanted, dtype, loaded=(model, tokenizer))
        if folder not in filled:
            for chunk in manifest.chunks:
                cache.put(chunk.sha256, (folder / chunk.file).read_bytes(), blake3=chunk.blake3)
            filled.add(folder)
            weights = weights or manifest.total_bytes
        budget_mb = round(weights / 4 / 2**20)  # 25 % of the float32 weights, for every side
        source = CachedChunkSource(cache, FilesystemBackend(folder))
        engine = await StreamingEngine.open(
            source, memory_budget_mb=budget_mb, compute_dtype=compute
        )
        assert engine.plan.mode == "streaming"
        engines[name] = engine
    return engines, weights


async def bench_streamed(
    root: Path, cache: ChunkCache, rounds: int, new_tokens: int
) -> dict[str, Any]:
    """Cases d and e (see the module doc): the medians (s) of every side, and checks."""
    model, tokenizer = load()
    model_bf16 = copy.deepcopy(model).to(torch.bfloat16)
    engines, weights = await _open_engines(root, cache, model, tokenizer)
    prompt = QUESTIONS[0]
    ids = _chat_ids(tokenizer, prompt)
    request = {"messages": [{"role": "user", "content": prompt}], "max_new_tokens": new_tokens}
    tokens: dict[str, list[int]] = {}
    wall: dict[str, list[float]] = {n: [] for n in (MEMORY, MEMORY_BF16, *ENGINES)}
    cpu: dict[str, list[float]] = {n: [] for n in wall}
    redis_cpu: dict[str, list[float]] = {n: [] for n in wall}
    faults: dict[str, list[int]] = {n: [] for n in wall}
    streamed: dict[str, int] = {n: 0 for n in wall}

    async def run(name: str) -> list[int]:
        if name in (MEMORY, MEMORY_BF16):
            return _in_memory(model if name == MEMORY else model_bf16, ids, new_tokens)
        engine = engines[name]
        engine.residency.reset_stats()
        [result] = await engine.run_async("generate", [request])
        # loaded_bytes counts chunks as materialized (widened): the bytes fetched are fewer
        streamed[name] += int(engine.residency.stats.loaded_bytes / engine.residency.expand)
        return list(result["token_ids"])

    try:
        for name in wall:  # warm-up (and the first tokens)
            tokens[name] = await run(name)
        streamed = {n: 0 for n in wall}
        names = list(wall)
        for rep in range(rounds):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                faults_before, redis_before = _minflt(), _redis_cpu_s(cache)
                cpu_before, started = time.process_time(), time.perf_counter()
                assert await run(name) == tokens[name]
                wall[name].append(time.perf_counter() - started)
                cpu[name].append(time.process_time() - cpu_before)
                redis_cpu[name].append(_redis_cpu_s(cache) - redis_before)
                faults[name].append(_minflt() - faults_before)
        divergent = {n: await _compare_questions(engines, n, new_tokens) for n in (BF16, BF16_BF16)}
    finally:
        for engine in engines.values():
            await engine.aclose()

    n_new = len(tokens[MEMORY])
    print(
        f"SmolLM2 ({weights / 2**20:.0f} MiB float32), one chat request, {n_new} new tokens, "
        f"budget {engines[F32].settings.memory_budget_mb} MiB (25 % of the float32 weights), "
        f"chunks from Redis (blake3-verified); {rounds} interleaved rounds"
    )
    for name in wall:
        med = statistics.median(wall[name])
        per_token_mb = streamed[name] / max(rounds, 1) / n_new / 1e6
        print(
            f"  {name:30s} {med:6.2f} s {med / n_new * 1e3:5.0f} ms/token  cpu "
            f"{statistics.median(cpu[name]):5.2f} + redis {statistics.median(redis_cpu[name]):4.2f}"
            f" s {statistics.median(faults[name]):6.0f} minor faults "
            f"{per_token_mb:6.1f} MB fetched/token"
        )
    print(f"  check: engine float32 tokens == transformers: {tokens[F32] == tokens[MEMORY]}")
    med = {name: statistics.median(values) for name, values in wall.items()}
    _verdict("(d) streamed (25 %, Redis) / in memory", med[F32] / med[MEMORY], 2.5, "x")
    _verdict("(e) bf16 / float32 storage, float32 math, per token", med[BF16] / med[F32], 0.7)
    _verdict("(e) bf16 / float32 storage, bf16 math, per token", med[BF16_BF16] / med[F32], 0.7)
    for name, found in divergent.items():
        print(
            f"(e) greedy tokens {name} == float32 chunks on the demo questions: "
            + ("all equal" if not found else "; ".join(found))
        )
    return {
        "median_s": med,
        "rounds": rounds,
        "new_tokens": n_new,
        "fetched_mb_per_token": {
            n: streamed[n] / max(rounds, 1) / n_new / 1e6 for n in wall if n in ENGINES
        },
        "tokens_equal": tokens[F32] == tokens[MEMORY],
        "divergent": divergent,
    }


def to_figures(m: dict[str, Any]) -> list[Figure]:
    """d and e."""
    med = m["median_s"]
    how = (
        f"SmolLM2, the demo's first question, {m['new_tokens']} greedy tokens, budget 25 % of "
        f"the float32 weights, chunks from Redis; medians of {m['rounds']} interleaved rounds"
    )
    return [
        Figure(
            "streamed.d_vs_memory",
            med[F32] / med[MEMORY],
            "x",
            "(d) one streamed request (float32, 25 %) / transformers in memory, time",
            goal="<= 2.5",
            note=how,
        ),
        Figure(
            "streamed.d_bf16_math_vs_memory",
            med[BF16_BF16] / med[MEMORY],
            "x",
            "(d) the same, bf16 chunks and bf16 math / float32 in memory",
        ),
        Figure(
            "streamed.d_bf16_math_vs_memory_bf16",
            med[BF16_BF16] / med[MEMORY_BF16],
            "x",
            "(d) the same, bf16 chunks and bf16 math / bf16 in memory",
        ),
        Figure(
            "streamed.e_bf16_vs_f32",
            med[BF16] / med[F32],
            "x",
            "(e) bf16 / float32 chunks, float32 math (default), time per token",
            goal="<= 0.7",
        ),
        Figure(
            "streamed.e_bf16_math_vs_f32",
            med[BF16_BF16] / med[F32],
            "x",
            "(e) bf16 / float32 chunks, bf16 math, time per token",
            goal="<= 0.7",
        ),
        Figure(
            "streamed.e_questions_differing",
            len(m["divergent"][BF16]) + len(m["divergent"][BF16_BF16]),
            "",
            "(e) demo questions whose greedy tokens differ, bf16 vs float32 chunks",
            goal="<= 0",
            note="both bf16 sides (float32 and bf16 math), the demo's three questions each",
        ),
        Figure(
            "streamed.f32_ms_per_token",
            med[F32] / m["new_tokens"] * 1e3,
            "ms",
            "(d) float32 chunks streamed, per token",
        ),
        Figure(
            "streamed.memory_ms_per_token",
            med[MEMORY] / m["new_tokens"] * 1e3,
            "ms",
            "(d) transformers in memory (float32), per token",
        ),
        Figure(
            "streamed.f32_fetched_mb_per_token",
            m["fetched_mb_per_token"][F32],
            "MB",
            "(d) float32 chunks: MB fetched per token",
        ),
    ]


def figures(profile: Profile) -> list[Figure]:
    """Figures for ``bench/run.py``."""
    from engine import redis_cache  # bench/engine.py

    async def go() -> dict[str, Any]:
        async with redis_cache() as (root, cache):
            return await bench_streamed(root, cache, profile.pick(2, 3), profile.pick(8, 16))

    m = asyncio.run(go())
    assert m["tokens_equal"], "the streamed float32 tokens differ from transformers'"
    return to_figures(m)


def _verdict(what: str, ratio: float, goal: float, unit: str = "") -> None:
    print(f"{what} = {ratio:.2f}{unit}  (goal <= {goal}: {'met' if ratio <= goal else 'NOT met'})")


async def _compare_questions(
    engines: dict[str, StreamingEngine], name: str, new_tokens: int
) -> list[str]:
    """The demo questions through the float32 side and ``name``; where tokens part, how far."""
    found: list[str] = []
    for question in QUESTIONS:
        request = {
            "messages": [{"role": "user", "content": question}],
            "max_new_tokens": new_tokens,
        }
        [wide] = await engines[F32].run_async("generate", [request])
        [narrow] = await engines[name].run_async("generate", [request])
        a, b = wide["token_ids"], narrow["token_ids"]
        if a != b:
            at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), len(a))
            found.append(
                f"{question!r} parts at token {at} ({wide['text']!r} vs {narrow['text']!r})"
            )
    return found

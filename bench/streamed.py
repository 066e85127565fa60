"""Cases d and e of ``bench/engine.py``: one streamed SmolLM2 request, as a user feels it.

d. **streamed generation** -- SmolLM2-135M-Instruct, the demo's chat prompt, 16 greedy new
   tokens, one request: the engine at ``memory_budget_mb`` = 25 % of the float32 weights with
   every chunk in the Redis chunk cache (BLAKE3-verified reads into reused buffers) vs
   transformers' ``generate`` with every weight in memory. Goal: <= 2.5x.
e. **bfloat16 storage** -- the same request from a chunk set written with ``sw chunk --dtype
   bfloat16`` (computed in float32), same budget, vs the float32 chunk set. Goal: wall time
   per token <= 0.7x; greedy tokens compared on the demo's three questions.

Rounds interleave the three sides (order rotating). For each side the run also reports the
process's CPU seconds, Redis's CPU seconds and minor page faults per run, and the bytes
streamed per generated token.
"""

from __future__ import annotations

import resource
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from sw_core.cache import ChunkCache
from sw_core.chunks.chunker import chunk_model
from sw_core.engine import CachedChunkSource, StreamingEngine
from sw_core.local.bundled import smollm2_gguf_path
from sw_core.local.demo import QUESTIONS
from sw_core.storage import FilesystemBackend

MEMORY = "transformers in memory"
F32 = "engine, float32 chunks"
BF16 = "engine, bfloat16 chunks"


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


async def bench_streamed(root: Path, cache: ChunkCache, rounds: int, new_tokens: int) -> None:
    """Cases d and e (see the module doc)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    engines: dict[str, StreamingEngine] = {}
    weights = 0
    for name, dtype in ((F32, None), (BF16, "bfloat16")):
        folder = root / f"smollm2-{dtype or 'float32'}"
        manifest = chunk_model(model, folder, name="smollm2", tokenizer=tokenizer, dtype=dtype)
        for chunk in manifest.chunks:
            cache.put(chunk.sha256, (folder / chunk.file).read_bytes(), blake3=chunk.blake3)
        weights = weights or manifest.total_bytes
        budget_mb = round(weights / 4 / 2**20)  # 25 % of the float32 weights, for both
        source = CachedChunkSource(cache, FilesystemBackend(folder))
        engines[name] = await StreamingEngine.open(source, memory_budget_mb=budget_mb)
        assert engines[name].plan.mode == "streaming"
    prompt = QUESTIONS[0]
    ids = _chat_ids(tokenizer, prompt)
    request = {"messages": [{"role": "user", "content": prompt}], "max_new_tokens": new_tokens}
    tokens: dict[str, list[int]] = {}
    wall: dict[str, list[float]] = {n: [] for n in (MEMORY, F32, BF16)}
    cpu: dict[str, list[float]] = {n: [] for n in wall}
    redis_cpu: dict[str, list[float]] = {n: [] for n in wall}
    faults: dict[str, list[int]] = {n: [] for n in wall}
    streamed: dict[str, int] = {n: 0 for n in wall}

    async def run(name: str) -> list[int]:
        if name == MEMORY:
            return _in_memory(model, ids, new_tokens)
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
            for name in names[rep % 3 :] + names[: rep % 3]:
                faults_before, redis_before = _minflt(), _redis_cpu_s(cache)
                cpu_before, started = time.process_time(), time.perf_counter()
                assert await run(name) == tokens[name]
                wall[name].append(time.perf_counter() - started)
                cpu[name].append(time.process_time() - cpu_before)
                redis_cpu[name].append(_redis_cpu_s(cache) - redis_before)
                faults[name].append(_minflt() - faults_before)
        divergent = await _compare_questions(engines, new_tokens)
    finally:
        for engine in engines.values():
            await engine.aclose()

    n_new = len(tokens[MEMORY])
    print(
        f"SmolLM2 ({weights / 2**20:.0f} MiB float32), one chat request, {n_new} new tokens, "
        f"budget {engines[F32].settings.memory_budget_mb} MiB (25 %), chunks from Redis "
        f"(blake3-verified); {rounds} interleaved rounds"
    )
    for name in wall:
        med = statistics.median(wall[name])
        per_token_mb = streamed[name] / max(rounds, 1) / n_new / 1e6
        print(
            f"  {name:28s} {med:7.2f} s  {med / n_new * 1e3:6.0f} ms/token  cpu "
            f"{statistics.median(cpu[name]):5.2f} + redis {statistics.median(redis_cpu[name]):4.2f}"
            f" s  {statistics.median(faults[name]):9.0f} minor faults  "
            f"{per_token_mb:6.1f} MB fetched/token"
        )
    same = tokens[F32] == tokens[MEMORY]
    print(f"  check: engine float32 tokens == transformers: {same}")
    ratio_d = statistics.median(wall[F32]) / statistics.median(wall[MEMORY])
    met_d = "met" if ratio_d <= 2.5 else "NOT met"
    print(f"(d) streamed (25 %, Redis) / in memory = {ratio_d:.2f}x  (goal <= 2.5: {met_d})")
    ratio_e = statistics.median(wall[BF16]) / statistics.median(wall[F32])
    met_e = "met" if ratio_e <= 0.7 else "NOT met"
    print(f"(e) bfloat16 / float32 storage, wall per token = {ratio_e:.2f}  (goal <= 0.7: {met_e})")
    print(
        "(e) greedy tokens bfloat16 == float32 on the demo questions: "
        + ("all equal" if not divergent else "; ".join(divergent))
    )


async def _compare_questions(engines: dict[str, StreamingEngine], new_tokens: int) -> list[str]:
    """The demo questions through both engines; where the tokens part, and how far."""
    found: list[str] = []
    for question in QUESTIONS:
        request = {
            "messages": [{"role": "user", "content": question}],
            "max_new_tokens": new_tokens,
        }
        [wide] = await engines[F32].run_async("generate", [request])
        [narrow] = await engines[BF16].run_async("generate", [request])
        a, b = wide["token_ids"], narrow["token_ids"]
        if a != b:
            at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), len(a))
            found.append(
                f"{question!r} parts at token {at} ({wide['text']!r} vs {narrow['text']!r})"
            )
    return found

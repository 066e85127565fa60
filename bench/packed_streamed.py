"""Packed SmolLM2 streamed against transformers in memory, side by side in one process.

SmolLM2-135M-Instruct from its GGUF file kept packed (``sw chunk model.gguf``: Q4_1 and Q8_0,
117 MB; row shards of 2.2 MiB, a layer as the engine reads it), the engine at
``memory_budget_mb`` = 25 % of the packed chunk set (nine layers kept, the rest fetched again
at every decode step) and a KV
cache that holds the 16 rows in one batch, computing with the packed
kernels (bfloat16 activations, ``SW_COMPUTE_DTYPE=auto`` on this CPU), against transformers
with the dequantized float32 weights in memory (the reference the goal names):

- **one request**, 16 greedy tokens (the demo's third question, which runs all 16), chunks
  from the Redis chunk cache (BLAKE3-verified reads into reused buffers) and from the chunk
  folder: wall per generated token. Goal: <= 1.0x transformers.
- **16 concurrent requests** (``bench/prompts.py``), one batch, up to 16 new tokens each,
  from Redis: generated tokens per second. Goal: >= transformers' batched ``generate``.

Rounds interleave the sides (order rotating); medians. Each side's tokens are checked equal
to transformers' (greedy, same prompt ids), or the first divergence is printed. CPU seconds
of this process and of the Redis server are printed per side: on 2 shared cores the fetch
(Redis, socket copies, BLAKE3) and the compute share them.

Usage: ``.venv/bin/python bench/packed_streamed.py [--rounds 5] [--work DIR] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import redis
import torch
from figures import Figure, Profile
from packed_sets import BLOCK_SHARD_MB, chunk_set
from prompts import PROMPTS, chat_ids

from sw_core.cache import ChunkCache
from sw_core.context import kv_bytes_per_token
from sw_core.engine import CachedChunkSource, StreamingEngine
from sw_core.keys import Keys
from sw_core.local.bundled import load_smollm2
from sw_core.local.demo import QUESTIONS
from sw_core.local.redis_server import RedisServer
from sw_core.storage import FilesystemBackend

NEW_TOKENS = 16
MEMORY = "transformers in memory (float32)"
REDIS = "engine, packed, 25 %, Redis"
FOLDER = "engine, packed, 25 %, folder"


def generate_in_memory(model: Any, rows: list[list[int]], pad_id: int) -> list[list[int]]:
    """transformers' greedy batched generate (left padding), new tokens cut after EOS."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False
        )
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    result = []
    for row in out[:, width:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos_ids), len(row))
        result.append(row[:cut])
    return result


def first_divergence(a: list[int], b: list[int]) -> str:
    if a == b:
        return "equal"
    at = next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )
    return f"part at token {at}"


async def divergences(
    model: Any, engine: StreamingEngine, rows: list[list[int]], tokens: dict[str, list[list[int]]]
) -> list[dict[str, Any]]:
    """Each row whose greedy tokens part from transformers': at the first token that differs,
    the log-probabilities both sides give the two picks -- transformers' from a float32
    forward of the row's prompt and common prefix (one row, unpadded), the engine's from
    ``top_logprobs`` of the same batch run again (its tokens must be the same)."""
    engine_rows, memory_rows = tokens[REDIS], tokens[MEMORY]
    parting = [i for i, (a, b) in enumerate(zip(engine_rows, memory_rows, strict=True)) if a != b]
    if not parting:
        return []
    requests = [
        {"input_ids": r, "max_new_tokens": NEW_TOKENS, "logprobs": True, "top_logprobs": 5}
        for r in rows
    ]
    again = await engine.run_async("generate", requests)
    assert [g["token_ids"] for g in again] == engine_rows, "the engine changed its tokens"
    out = []
    for i in parting:
        mine, theirs = engine_rows[i], memory_rows[i]
        at = next((k for k, (x, y) in enumerate(zip(mine, theirs, strict=False)) if x != y), None)
        if at is None:  # one stopped (EOS) where the other went on
            continue
        entry = again[i]["logprobs"][at]
        engine_lp = {t["token_id"]: t["logprob"] for t in entry.get("top_logprobs", [])}
        engine_lp[entry["token_id"]] = entry["logprob"]
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([rows[i] + mine[:at]])).logits[0, -1]
        reference = torch.log_softmax(logits.float(), -1)
        picks = (theirs[at], mine[at])
        out.append(
            {
                "row": i,
                "token": at,
                "picks": picks,
                "transformers": [float(reference[t]) for t in picks],
                "engine": [engine_lp.get(t) for t in picks],
            }
        )
    return out


def redis_cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.work)
    folder, manifest = chunk_set(root, "gguf", max_chunk_mb=BLOCK_SHARD_MB)
    budget_mb = round(manifest.total_bytes / 4 / 2**20)
    model, tokenizer = load_smollm2()
    pad_id = int(model.generation_config.pad_token_id or 0)
    single = [chat_ids(tokenizer, QUESTIONS[2])]
    batch = [chat_ids(tokenizer, p) for p in PROMPTS]
    # the KV cache of the 16 rows in one batch (transformers holds its own in memory); the
    # default, a quarter of a 28 MiB budget, would split them into batches, a sweep each
    kv_mb = math.ceil(
        len(batch)
        * (max(map(len, batch)) + NEW_TOKENS)
        * kv_bytes_per_token(model.config, 2)
        / 2**20
    )
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        cache = ChunkCache(client, keys=Keys("bench"), cache_size_bytes=1024 << 20)
        engines = {
            REDIS: await StreamingEngine.open(
                CachedChunkSource(cache, FilesystemBackend(folder)),
                memory_budget_mb=budget_mb,
                max_kv_cache_mb=kv_mb,
            ),
            FOLDER: await StreamingEngine.open(
                str(folder), memory_budget_mb=budget_mb, max_kv_cache_mb=kv_mb
            ),
        }
        for engine in engines.values():
            assert engine.plan.mode == "streaming" and engine.compute_dtype == torch.bfloat16
        try:
            await engines[REDIS].warmup()  # the cache holds what the engine reads, once
            figures = await _rounds(args.rounds, model, pad_id, engines, single, batch, client)
        finally:
            for engine in engines.values():
                await engine.aclose()
            cache.close()
            client.close()
    figures["budget_mb"] = budget_mb
    figures["kv_cache_mb"] = kv_mb
    figures["chunk_set_mb"] = manifest.total_bytes / 1e6
    return figures


async def _rounds(
    rounds: int,
    model: Any,
    pad_id: int,
    engines: dict[str, StreamingEngine],
    single: list[list[int]],
    batch: list[list[int]],
    client: redis.Redis,
) -> dict[str, Any]:
    async def run(side: str, rows: list[list[int]]) -> list[list[int]]:
        if side == MEMORY:
            return generate_in_memory(model, rows, pad_id)
        requests = [{"input_ids": r, "max_new_tokens": NEW_TOKENS} for r in rows]
        return [g["token_ids"] for g in await engines[side].run_async("generate", requests)]

    cases = {
        "one request": (single, (MEMORY, REDIS, FOLDER)),
        "16 requests": (batch, (MEMORY, REDIS)),
    }
    out: dict[str, Any] = {}
    for case, (rows, sides) in cases.items():
        tokens = {side: await run(side, rows) for side in sides}  # warm-up
        parted = await divergences(model, engines[REDIS], rows, tokens)
        wall: dict[str, list[float]] = {s: [] for s in sides}
        cpu: dict[str, list[float]] = {s: [] for s in sides}
        rcpu: dict[str, list[float]] = {s: [] for s in sides}
        for r in range(rounds):
            for side in sides[r % len(sides) :] + sides[: r % len(sides)]:
                before = redis_cpu_s(client)
                cpu0, t0 = time.process_time(), time.perf_counter()
                got = await run(side, rows)
                wall[side].append(time.perf_counter() - t0)
                cpu[side].append(time.process_time() - cpu0)
                rcpu[side].append(redis_cpu_s(client) - before)
                assert got == tokens[side], f"{side} changed its tokens between rounds"
        generated = {s: sum(map(len, tokens[s])) for s in sides}
        print(f"\n{case} ({rounds} rounds, medians):")
        result: dict[str, Any] = {}
        for side in sides:
            med = statistics.median(wall[side])
            per_token = med / max(len(t) for t in tokens[side])
            rate = generated[side] / med
            same = [
                first_divergence(a, b) for a, b in zip(tokens[side], tokens[MEMORY], strict=True)
            ]
            print(
                f"  {side:34s} {med:6.2f} s  {per_token * 1e3:6.1f} ms/step  {rate:6.1f} tokens/s  "
                f"cpu {statistics.median(cpu[side]):5.2f} s + redis "
                f"{statistics.median(rcpu[side]):4.2f} s  tokens vs transformers: "
                f"{'all equal' if all(x == 'equal' for x in same) else same}"
            )
            result[side] = {
                "wall_s": med,
                "step_s": per_token,
                "tokens_per_s": rate,
                "rows_parting": sum(x != "equal" for x in same),
            }
        for d in parted:
            fmt = ", ".join("-" if v is None else f"{v:.3f}" for v in d["engine"])
            print(
                f"  row {d['row']} parts at token {d['token']}: transformers' pick {d['picks'][0]} "
                f"/ the engine's {d['picks'][1]}: log-probabilities transformers "
                f"{d['transformers'][0]:.3f}, {d['transformers'][1]:.3f}; engine {fmt}"
            )
        result["divergence_gap_nats"] = max(
            (d["transformers"][0] - d["transformers"][1] for d in parted), default=0.0
        )
        base = result[MEMORY]
        for side in sides[1:]:
            if case == "one request":
                ratio = result[side]["step_s"] / base["step_s"]
                print(
                    f"  {side}: wall per token / transformers = {ratio:.2f}x (goal <= 1.0: {'met' if ratio <= 1.0 else 'NOT met'})"
                )
            else:
                ratio = result[side]["tokens_per_s"] / base["tokens_per_s"]
                print(
                    f"  {side}: tokens/s / transformers batched = {ratio:.2f}x (goal >= 1.0: {'met' if ratio >= 1.0 else 'NOT met'})"
                )
            result[side]["ratio"] = ratio
        out[case] = result
    return out


def figures(profile: Profile) -> list[Figure]:
    """Figures for ``bench/run.py``: the chunk sets in the run's shared folder."""
    import smollm2

    shared = smollm2.shared_dir()
    with tempfile.TemporaryDirectory(prefix="sw-bench-packed-") as tmp:
        args = argparse.Namespace(rounds=profile.pick(2, 5), work=str(shared or tmp))
        m = asyncio.run(bench(args))
    return to_figures(m, args.rounds)


def to_figures(m: dict[str, Any], rounds: int) -> list[Figure]:
    one, many = m["one request"], m["16 requests"]
    how = (
        f"SmolLM2 from its GGUF kept packed ({m['chunk_set_mb']:.0f} MB), budget "
        f"{m['budget_mb']} MiB (25 %; row shards of {BLOCK_SHARD_MB} MiB), KV cache "
        f"{m.get('kv_cache_mb', '?')} MiB, bfloat16 activations, {NEW_TOKENS} greedy tokens; "
        f"medians of {rounds} interleaved rounds"
    )
    out = [
        Figure(
            "packed.one_request_redis_vs_memory",
            one[REDIS]["ratio"],
            "x",
            "packed SmolLM2 streamed from Redis (25 %) / transformers in memory (float32), "
            "time per token",
            goal="<= 1.0",
            note=how,
        ),
        Figure(
            "packed.one_request_folder_vs_memory",
            one[FOLDER]["ratio"],
            "x",
            "packed SmolLM2 streamed from a folder (25 %) / transformers in memory, time per token",
            goal="<= 1.0",
            note=how,
        ),
        Figure(
            "packed.batch16_redis_vs_memory",
            many[REDIS]["ratio"],
            "x",
            "16 requests, packed from Redis (25 %) / transformers' batched generate, tokens/s",
            goal=">= 1.0",
            note=how,
        ),
    ]
    for case, side, name in (
        (one, MEMORY, "one_request_memory_ms"),
        (one, REDIS, "one_request_redis_ms"),
        (one, FOLDER, "one_request_folder_ms"),
    ):
        out.append(Figure(f"packed.{name}", case[side]["step_s"] * 1e3, "ms", f"{side}, per token"))
    out.append(
        Figure(
            "packed.rows_parting_from_memory",
            one[REDIS]["rows_parting"] + one[FOLDER]["rows_parting"] + many[REDIS]["rows_parting"],
            "",
            "greedy rows whose tokens part from transformers' (1 + 1 + 16 rows; bf16 vs float32)",
        )
    )
    out.append(
        Figure(
            "packed.divergence_gap_nats",
            max(one["divergence_gap_nats"], many["divergence_gap_nats"]),
            "nats",
            "where greedy tokens part: transformers' float32 log-probability of its pick minus "
            "that of the engine's, the largest (0: a tie)",
        )
    )
    for side, name in ((MEMORY, "batch16_memory"), (REDIS, "batch16_redis")):
        out.append(
            Figure(f"packed.{name}", many[side]["tokens_per_s"], "tokens/s", f"16 requests, {side}")
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--work", help="folder for the chunk sets (default: a temporary one)")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="sw-bench-packed-") as tmp:
        args.work = args.work or tmp
        figures = asyncio.run(bench(args))
    print(f"load average at the end: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The streaming engine against plain transformers in memory, measured side by side.

Starts its own Redis (``sw_core.local.redis_server``) holding a :class:`~sw_core.cache.ChunkCache`,
chunks the two bundled models into a temporary folder, and times, in interleaved
repetitions (the order rotates each round; medians):

a. **resident** -- all-MiniLM-L6-v2, a batch of 8 x 32 tokens: ``engine.run_async("forward")``
   with every chunk resident (budget 2048 MiB, warmed up) vs the transformers model in
   memory called directly. Goal: ratio <= 1.03 (issue 16; 1.05 before). Also shown: the same in-memory forward run
   on a worker thread, as the engine computes on its own thread (information only).
b. **cold** -- the same batch with every chunk coming from the Redis chunk cache
   (``clear_cache()`` before each run: a worker that holds nothing), and in the same rounds
   *fetch alone*: every chunk fetched, verified (BLAKE3) and deserialized through the same
   source, one after the other (the definition the goal uses) and all at once (the fastest
   the fetches go with no compute). Compute alone is the resident forward of a. Overlap
   efficiency = cold wall / max(fetch, compute). Goal: <= 1.1 (issue 16; 1.2 before). Process and Redis CPU time
   per case are printed too: on a machine with few cores, fetching (hashing, socket copies,
   Redis itself) and compute share the cores, so ``(fetch CPU + compute CPU) / cores`` is a
   floor for the cold wall whatever the overlap.
c. **batching** -- SmolLM2-135M-Instruct under ``memory_budget_mb`` = 25 % of its weights
   (blocks stream through the budget at every decode step), chunks in the Redis cache: 16
   greedy chat requests in one batch vs the same 16 one after the other. The one-by-one
   pass is long, so each round is: batched, 8 requests one by one, batched, the other 8,
   batched (every batched run sits next to one-by-one work). Goal: throughput >= 14x (issue
   16; 8x before).

Correctness is asserted on every side: (a, b) engine outputs equal the in-memory model's
(max |diff| <= 1e-5), (c) the batched tokens equal the one-by-one tokens and transformers'
own greedy ``generate``.

The in-memory baseline runs in the same process as the engine, so it shares the engine's
process-wide settings (torch threads; glibc's malloc thresholds, ``sw_core.engine.memory.heap``).

d, e. **one streamed request** (``bench/streamed.py``): SmolLM2 streamed at a 25 % budget from
   the Redis cache vs transformers in memory (goal <= 2.5x), and bfloat16 vs float32 chunks
   (goal <= 0.7x wall per token).

Usage: ``.venv/bin/python bench/engine.py [--quick] [--only a|b|c|d] [--reps 15]``. The full
run takes about 3.5-4 minutes on 2 cores (c: about 3); ``--quick`` runs 7 rounds of a/b and
8 new tokens per request in c (about 2 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import redis
import torch
from prompts import PROMPTS  # bench/prompts.py, beside this script

from sw_core.cache import ChunkCache
from sw_core.chunks.chunker import chunk_model
from sw_core.chunks.manifest import Manifest
from sw_core.engine import CachedChunkSource, StreamingEngine
from sw_core.keys import Keys
from sw_core.local.bundled import load_smollm2, minilm_path
from sw_core.local.redis_server import RedisServer
from sw_core.storage import FilesystemBackend

Case = Callable[[], Awaitable[Any]]

MEMORY = "transformers in memory"
MEMORY_THREAD = "transformers in memory, worker thread"
RESIDENT = "engine, resident"
COLD = "engine, cold (every chunk from Redis)"
FETCH_SEQ = "fetch alone, one chunk at a time"
FETCH_ALL = "fetch alone, all chunks at once"


# --------------------------------------------------------------------------- timing
@dataclass
class Timings:
    """Wall seconds, process CPU seconds and Redis CPU seconds of each case, per run."""

    client: redis.Redis
    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    redis_cpu: dict[str, list[float]] = field(default_factory=dict)

    def _redis_cpu_s(self) -> float:
        info = self.client.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    async def time(self, name: str, case: Case) -> Any:
        redis_before = self._redis_cpu_s()
        cpu_before = time.process_time()
        started = time.perf_counter()
        result = await case()
        wall_s = time.perf_counter() - started
        self.wall.setdefault(name, []).append(wall_s)
        self.cpu.setdefault(name, []).append(time.process_time() - cpu_before)
        self.redis_cpu.setdefault(name, []).append(self._redis_cpu_s() - redis_before)
        return result

    async def interleaved(self, cases: dict[str, Case], reps: int) -> None:
        """Run every case once per round, rotating the order."""
        names = list(cases)
        for rep in range(reps):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                await self.time(name, cases[name])

    def median_s(self, name: str) -> float:
        return statistics.median(self.wall[name])

    def row(self, name: str, note: str = "") -> str:
        ms = [v * 1e3 for v in self.wall[name]]
        cpu_ms = statistics.median(self.cpu[name]) * 1e3
        redis_ms = statistics.median(self.redis_cpu[name]) * 1e3
        return (
            f"  {name:38s} {statistics.median(ms):8.1f} ms (min {min(ms):7.1f}, max "
            f"{max(ms):7.1f}, n={len(ms)})  cpu {cpu_ms:6.1f} + redis {redis_ms:5.1f} ms{note}"
        )

    def cpu_total_s(self, name: str) -> float:
        return statistics.median(self.cpu[name]) + statistics.median(self.redis_cpu[name])


def verdict(ratio: float, goal: float, *, at_most: bool) -> str:
    met = ratio <= goal if at_most else ratio >= goal
    return f"goal {'<=' if at_most else '>='} {goal:g}: {'met' if met else 'NOT met'}"


def put_chunks(cache: ChunkCache, folder: Path, manifest: Manifest) -> None:
    for chunk in manifest.chunks:
        cache.put(chunk.sha256, (folder / chunk.file).read_bytes())


async def fetch_chunk(engine: StreamingEngine, source: CachedChunkSource, chunk: Any) -> None:
    """One chunk as the engine loads it on CPU: fetched (verified), then deserialized."""
    data = await source.fetch(chunk)
    engine.skeleton.deserialize(chunk, data)


# --------------------------------------------------------------------------- a + b
async def bench_minilm(root: Path, cache: ChunkCache, reps: int, only: str | None) -> None:
    from transformers import AutoModel

    source_dir = minilm_path()
    folder = root / "minilm"
    manifest = chunk_model(source_dir, folder, name="minilm")
    put_chunks(cache, folder, manifest)
    model = AutoModel.from_pretrained(source_dir).eval()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, int(model.config.vocab_size), (8, 32), generator=generator)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    mask = torch.ones_like(ids)
    requests = [{"input_ids": r, "output": "hidden"} for r in ids.tolist()]
    weights_mb = sum(c.size_bytes for c in manifest.chunks) / 1e6

    resident = await StreamingEngine.open(str(folder), memory_budget_mb=2048)
    source = CachedChunkSource(cache, FilesystemBackend(folder))
    cold = await StreamingEngine.open(source, memory_budget_mb=2048)
    timings = Timings(cache.redis)
    worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bench-forward")
    try:
        assert resident.plan.mode == "resident" and cold.plan.mode == "resident"
        await resident.warmup()

        def forward() -> torch.Tensor:
            with torch.inference_mode():
                return model(input_ids=ids, attention_mask=mask).last_hidden_state

        async def in_memory() -> torch.Tensor:
            return forward()

        async def in_memory_thread() -> torch.Tensor:
            return await asyncio.get_running_loop().run_in_executor(worker, forward)

        async def engine_resident() -> torch.Tensor:
            return torch.stack(await resident.run_async("forward", requests, tensors=True))

        async def engine_cold() -> torch.Tensor:
            cold.clear_cache()
            cold.residency.reset_stats()
            out = await cold.run_async("forward", requests, tensors=True)
            assert cold.residency.stats.loads == len(manifest.chunks)
            return torch.stack(out)

        async def fetch_seq() -> None:
            for chunk in manifest.chunks:
                await fetch_chunk(cold, source, chunk)

        async def fetch_all() -> None:
            await asyncio.gather(*(fetch_chunk(cold, source, c) for c in manifest.chunks))

        expected = await in_memory()
        for name, run in ((RESIDENT, engine_resident), (COLD, engine_cold)):
            diff = float((await run() - expected).abs().max())
            assert diff <= 1e-5, f"{name} differs from transformers by {diff}"
            print(f"  check: {name} output == transformers (max |diff| {diff:.1e})")
        await fetch_seq()
        await fetch_all()
        misses = source.cache_misses

        cases: dict[str, Case] = {
            MEMORY: in_memory,
            MEMORY_THREAD: in_memory_thread,
            RESIDENT: engine_resident,
        }
        if only in (None, "b"):
            cases.update({COLD: engine_cold, FETCH_SEQ: fetch_seq, FETCH_ALL: fetch_all})
        await timings.interleaved(cases, reps)
        assert source.cache_misses == misses, "a chunk did not come from the Redis cache"
    finally:
        worker.shutdown()
        await resident.aclose()
        await cold.aclose()

    print(f"MiniLM ({weights_mb:.1f} MB in {len(manifest.chunks)} chunks), batch 8 x 32 tokens")
    for name in cases:
        print(timings.row(name))
    compute_s = timings.median_s(RESIDENT)
    ratio_a = compute_s / timings.median_s(MEMORY)
    if only in (None, "a"):
        print(f"(a) resident / in memory = {ratio_a:.3f}  ({verdict(ratio_a, 1.03, at_most=True)})")
        threaded = compute_s / timings.median_s(MEMORY_THREAD)
        print(
            f"(a) resident / in memory on a worker thread = {threaded:.3f}  (information: the "
            "engine computes on its own thread; this baseline pays the same hop)"
        )
    if only in (None, "b"):
        wall_s = timings.median_s(COLD)
        print(f"(b) cold / in memory = {wall_s / timings.median_s(MEMORY):.2f}")
        for label, fetch in (("one at a time", FETCH_SEQ), ("all at once", FETCH_ALL)):
            fetch_s = timings.median_s(fetch)
            overlap = wall_s / max(fetch_s, compute_s)
            note = verdict(overlap, 1.1, at_most=True) if fetch == FETCH_SEQ else "information"
            print(
                f"(b) overlap efficiency = cold wall / max(fetch {label} {fetch_s * 1e3:.1f}, "
                f"compute {compute_s * 1e3:.1f}) = {overlap:.2f}  ({note})"
            )
        cores = os.cpu_count() or 1
        fetch_cpu_s, compute_cpu_s = timings.cpu_total_s(FETCH_SEQ), timings.cpu_total_s(RESIDENT)
        floor_s = (fetch_cpu_s + compute_cpu_s) / cores
        print(
            f"    CPU: fetch {fetch_cpu_s * 1e3:.0f} + compute {compute_cpu_s * 1e3:.0f} ms "
            f"(process + Redis) on {cores} cores: cold wall >= {floor_s * 1e3:.0f} ms = "
            f"{floor_s / timings.median_s(FETCH_SEQ):.2f} x fetch however well they overlap; "
            f"the cold run used {timings.cpu_total_s(COLD) * 1e3:.0f} ms"
        )


# --------------------------------------------------------------------------- c
async def bench_smollm2(root: Path, cache: ChunkCache, rounds: int, new_tokens: int) -> None:
    model, tokenizer = load_smollm2()
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
    ratio = timings.median_s("16 one by one") / timings.median_s("16 batched")
    print(
        f"(c) batched / one by one throughput = {ratio:.1f}x  ({verdict(ratio, 14, at_most=False)})"
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
        row = out[0, ids.shape[1] :].tolist()
        cut = next((i + 1 for i, t in enumerate(row) if t in eos_ids), len(row))
        result.append(row[:cut])
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
                await bench_smollm2(Path(tmp), cache, args.rounds_c, args.new_tokens)
            if args.only in (None, "d"):
                from streamed import bench_streamed  # bench/streamed.py, beside this script

                await bench_streamed(Path(tmp), cache, args.rounds_d, 16)
        finally:
            cache.close()
            client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter generation")
    parser.add_argument("--only", choices=["a", "b", "c", "d"], help="run one part only (d: d+e)")
    parser.add_argument("--reps", type=int, help="rounds of a and b (default 15, quick 7)")
    parser.add_argument("--rounds-c", type=int, default=1, help="rounds of c (3 batched runs each)")
    parser.add_argument("--rounds-d", type=int, default=3, help="rounds of d and e")
    parser.add_argument("--new-tokens", type=int, help="max_new_tokens in c (default 16, quick 8)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    args.reps = args.reps or (7 if args.quick else 15)
    args.new_tokens = args.new_tokens or (8 if args.quick else 16)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}: {torch.get_num_threads()} intra-op / "
        f"{torch.get_num_interop_threads()} inter-op threads; {os.cpu_count()} CPUs; "
        f"rounds a/b {args.reps}, c {args.rounds_c}"
    )
    started = time.perf_counter()
    asyncio.run(main_async(args))
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

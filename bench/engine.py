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

Correctness is asserted: engine outputs equal the in-memory model's (max |diff| <= 1e-5).

The in-memory baseline runs in the same process as the engine, so it shares the engine's
process-wide settings (torch threads; glibc's malloc thresholds, ``sw_core.engine.memory.heap``).

c (batched vs one by one) is ``bench/batching.py``; d and e (one streamed request,
bfloat16 chunks) are ``bench/streamed.py``; ``--only c|d`` here runs those.

Usage: ``.venv/bin/python bench/engine.py [--quick] [--only a|b|c|d] [--reps 15]`` (a and b:
about a minute on 2 cores; ``--quick``: 5 rounds instead of 15).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import redis
import torch
from figures import Figure, Profile, print_figures  # bench/, beside this script
from timing import Case, Timings

from sw_core.cache import ChunkCache
from sw_core.chunks.chunker import chunk_model
from sw_core.chunks.manifest import Manifest
from sw_core.engine import CachedChunkSource, StreamingEngine
from sw_core.keys import Keys
from sw_core.local.bundled import minilm_path
from sw_core.local.redis_server import RedisServer
from sw_core.storage import FilesystemBackend

MEMORY = "transformers in memory"
MEMORY_THREAD = "transformers in memory, worker thread"
RESIDENT = "engine, resident"
COLD = "engine, cold (every chunk from Redis)"
FETCH_SEQ = "fetch alone, one chunk at a time"
FETCH_ALL = "fetch alone, all chunks at once"


def put_chunks(cache: ChunkCache, folder: Path, manifest: Manifest) -> None:
    for chunk in manifest.chunks:
        cache.put(chunk.sha256, (folder / chunk.file).read_bytes(), blake3=chunk.blake3)


@contextlib.asynccontextmanager
async def redis_cache() -> AsyncIterator[tuple[Path, ChunkCache]]:
    """A temporary folder and a chunk cache on a private Redis, for one benchmark."""
    with tempfile.TemporaryDirectory(prefix="sw-bench-engine-") as tmp, RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        cache = ChunkCache(client, keys=Keys("bench"), cache_size_bytes=2048 << 20)
        try:
            yield Path(tmp), cache
        finally:
            cache.close()
            client.close()


async def fetch_chunk(engine: StreamingEngine, source: CachedChunkSource, chunk: Any) -> None:
    """One chunk as the engine loads it on CPU: fetched (verified), then deserialized."""
    data = await source.fetch(chunk)
    engine.skeleton.deserialize(chunk, data)


# --------------------------------------------------------------------------- a + b
async def bench_minilm(root: Path, cache: ChunkCache, reps: int, only: str | None) -> Timings:
    """Cases a (and b unless ``only`` is "a"), interleaved; the timings."""
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
    return timings


def to_figures(timings: Timings, reps: int) -> list[Figure]:
    """(a), and (b) when it ran."""
    how = f"MiniLM, batch 8 x 32 tokens, medians of {reps} interleaved rounds"
    compute_s = timings.median_s(RESIDENT)
    out = [
        Figure(
            "engine.a_resident_vs_memory",
            compute_s / timings.median_s(MEMORY),
            "x",
            "(a) engine resident / transformers in memory, time",
            goal="<= 1.03",
            note=how,
        ),
        Figure(
            "engine.a_resident_vs_memory_thread",
            compute_s / timings.median_s(MEMORY_THREAD),
            "x",
            "(a) engine resident / in memory on a worker thread, time",
            note="the engine computes on its own thread; this baseline pays the same hop",
        ),
        Figure(
            "engine.a_memory_ms",
            timings.median_s(MEMORY) * 1e3,
            "ms",
            "(a) transformers in memory, one forward",
        ),
    ]
    if COLD not in timings.wall:
        return out
    wall_s, fetch_s = timings.median_s(COLD), timings.median_s(FETCH_SEQ)
    cores = os.cpu_count() or 1
    floor_s = (timings.cpu_total_s(FETCH_SEQ) + timings.cpu_total_s(RESIDENT)) / cores
    out += [
        Figure(
            "engine.b_overlap",
            wall_s / max(fetch_s, compute_s),
            "x",
            "(b) cold forward / max(fetch alone, compute alone)",
            goal="<= 1.1",
            note=f"fetch alone = every chunk from Redis one after the other; {how}",
        ),
        Figure("engine.b_cold_ms", wall_s * 1e3, "ms", "(b) cold forward, every chunk from Redis"),
        Figure("engine.b_fetch_ms", fetch_s * 1e3, "ms", "(b) fetch alone, one chunk at a time"),
        Figure(
            "engine.b_cpu_floor",
            floor_s / fetch_s,
            "x",
            f"(b) CPU floor: (fetch + compute CPU) / {cores} cores / fetch alone",
            note="process and Redis CPU: the best overlap these cores allow",
        ),
    ]
    return out


def figures(profile: Profile) -> list[Figure]:
    """Figures of a and b for ``bench/run.py``."""
    reps = profile.pick(5, 15)

    async def go() -> Timings:
        async with redis_cache() as (root, cache):
            return await bench_minilm(root, cache, reps, None)

    return to_figures(asyncio.run(go()), reps)


# --------------------------------------------------------------------------- main
def run_parts(args: argparse.Namespace) -> list[Figure]:
    """a and b here (or one of them); c and d+e from their modules."""
    profile = Profile("quick" if args.quick else "full")
    if args.only == "c":
        from batching import figures as batching_figures  # bench/batching.py

        return batching_figures(profile)
    if args.only == "d":
        from streamed import figures as streamed_figures  # bench/streamed.py

        return streamed_figures(profile)

    async def go() -> Timings:
        async with redis_cache() as (root, cache):
            return await bench_minilm(root, cache, args.reps, args.only)

    return to_figures(asyncio.run(go()), args.reps)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter generation")
    parser.add_argument(
        "--only", choices=["a", "b", "c", "d"], help="one part (default a and b; d: d and e)"
    )
    parser.add_argument("--reps", type=int, help="rounds of a and b (default 15, quick 5)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    args.reps = args.reps or (5 if args.quick else 15)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}: {torch.get_num_threads()} intra-op / "
        f"{torch.get_num_interop_threads()} inter-op threads; {os.cpu_count()} CPUs; "
        f"rounds a/b {args.reps}"
    )
    started = time.perf_counter()
    print_figures(run_parts(args))
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

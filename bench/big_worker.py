"""The worker of ``bench/big.py``: one engine over one chunk folder, one scenario, one process
(so its peak RSS is its own).

Opens a :class:`~sw_core.engine.StreamingEngine` on the folder (``StoreChunkSource``: the
folder read directly, as a worker reads what the chunk cache does not hold; with
``--cache-mb`` a ``CachedChunkSource`` through a private Redis chunk cache of that size,
whose misses the cache does not admit are read from the folder past it), starts
``--requests`` generate requests in one continuous-batching session (the worker's decode
loop: one model call per step, every request in it) and times every step. Prints one JSON
object: the plan, and per step its wall time, the bytes it read from the folder, how long
the compute thread waited for chunks, and the rows it ran.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from sw_core.counters import STORAGE_BYTES_READ, Counters
    from sw_core.engine import StoreChunkSource, StreamingEngine
    from sw_core.engine.tasks.continuous import DecodeSession
    from sw_core.settings import Settings
    from sw_core.storage import FilesystemBackend

    counters = Counters()
    redis_server = cache = None
    settings = Settings(
        memory_budget_mb=args.budget_mb,
        prefetch_count=args.prefetch,
        compute_dtype=args.compute_dtype,
        direct_io=args.direct_io,
        timeout_seconds=600,
        max_new_tokens_limit=4096,
        max_input_tokens=4096,
    )
    started = time.perf_counter()
    store = FilesystemBackend(args.folder, counters=counters, timeout_s=600)
    source: Any = StoreChunkSource(store)
    if args.cache_mb:
        import redis

        from sw_core.cache import ChunkCache
        from sw_core.engine import CachedChunkSource
        from sw_core.keys import Keys
        from sw_core.local.redis_server import RedisServer

        redis_server = RedisServer().start()
        cache = ChunkCache(
            redis.Redis.from_url(redis_server.url),
            keys=Keys("bench"),
            cache_size_bytes=args.cache_mb << 20,
        )
        source = CachedChunkSource(cache, store)
    engine = StreamingEngine(source, settings)
    await engine.load()
    load_s = time.perf_counter() - started
    generator = torch.Generator().manual_seed(args.seed)
    vocab = int(engine.skeleton.config.vocab_size)
    session = DecodeSession(engine, 1 << 40)
    joining = [
        session.parse(
            f"r{i}",
            {
                "input_ids": torch.randint(
                    10, vocab, (args.prompt_tokens,), generator=generator
                ).tolist(),
                "max_new_tokens": args.tokens + 1,
            },
        )
        for i in range(args.requests)
    ]
    steps: list[dict[str, Any]] = []
    try:
        while joining or session.active:
            rows = session.active + len(joining)
            read_before = counters.get(STORAGE_BYTES_READ)
            hits_before = getattr(source, "cache_hits", 0)
            wait_before = engine.residency.stats.wait_s
            began = time.perf_counter()
            await session.step_async(joining)
            wall = time.perf_counter() - began
            joining = []
            steps.append(
                {
                    "rows": rows,
                    "wall_s": wall,
                    "bytes": counters.get(STORAGE_BYTES_READ) - read_before,
                    "wait_s": engine.residency.stats.wait_s - wait_before,
                    "cache_hits": getattr(source, "cache_hits", 0) - hits_before,
                }
            )
    finally:
        info = engine.cache_info()
        await engine.aclose()
        if cache is not None:
            cache.close()
        if redis_server is not None:
            redis_server.cleanup()
    return {
        "pid": os.getpid(),
        "load_s": load_s,
        "plan": engine.plan.describe(),
        "kept_chunks": len(engine.plan.keep),
        "direct_io": bool(info["direct_io"]),
        "direct_reads": store.direct_reads,
        "peak_materialized_mb": info["peak_memory_mb"],
        "buffers_mapped": info["buffers_mapped"],
        "steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--budget-mb", type=int, required=True)
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--compute-dtype", default="bfloat16")
    parser.add_argument("--direct-io", default="auto")
    parser.add_argument("--requests", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=6, help="decode steps after the prefill")
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-mb", type=int, default=0, help="through a Redis chunk cache")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()

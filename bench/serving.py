"""Serving generate requests: continuous batching against static batching, side by side.

SmolLM2-135M-Instruct (bundled, fp32, 513 MiB) is chunked into a temporary folder and put
into the Redis chunk cache of a private Redis (a chunk loader runs as a process, as in
production). A real :class:`~workers.jobs.consumer.JobConsumer` with the real
:class:`~workers.jobs.inference.InferenceHandler` runs in this process, under
``memory_budget_mb`` = 25 % of the weights, so every decode step streams most blocks again.
Producers submit greedy chat requests arriving as a Poisson process (``--rate`` per second,
seeded), each asking for 8 to 64 new tokens (uniform, seeded), once with
``SW_GENERATE_BATCHING=static`` (a batch runs to its end: the baseline) and once with
``continuous`` (jobs join between steps), same arrivals, same requests.

Reported per mode: generated tokens per second (all tokens / first submit to last result),
time to first token p50/p99 (continuous: the first text delta of the job's token stream;
static: nothing is streamed, the first token reaches the client with the result), end-to-end
latency p50/p99, and weight bytes materialized per generated token (the engine's
``loaded_bytes``). Goals: throughput >= 1.5x static, TTFT p99 <= 0.3x static. The two modes
must produce the same tokens (asserted).

Usage: ``.venv/bin/python bench/serving.py [--requests 24] [--rate 0.5] [--seed 0]``
(12 requests at 0.2/s took about 15 minutes on the shared 2-core machine; ``--quick``: 8).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prompts import PROMPTS as ALL_PROMPTS  # bench/prompts.py, beside this script
from redis.asyncio import Redis

from producer import Producer
from sw_core.cache import ChunkCache
from sw_core.chunks.chunker import chunk_model
from sw_core.local.bundled import load_smollm2
from sw_core.local.redis_server import RedisServer
from sw_core.settings import Settings
from workers.jobs.consumer import JobConsumer
from workers.jobs.inference import InferenceHandler

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ALL_PROMPTS[:12]


@dataclass
class Request:
    at_s: float
    prompt: str
    max_new_tokens: int


@dataclass
class Outcome:
    submit_s: float
    first_s: float = 0.0
    end_s: float = 0.0
    tokens: list[int] = field(default_factory=list)


def plan(n: int, rate: float, seed: int, low: int = 8, high: int = 64) -> list[Request]:
    """Poisson arrivals (exponential gaps), ``low``-``high`` new tokens each, seeded."""
    rng = random.Random(seed)
    at, out = 0.0, []
    for i in range(n):
        out.append(Request(at, PROMPTS[i % len(PROMPTS)], rng.randint(low, high)))
        at += rng.expovariate(rate)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


async def one(producer: Producer, req: Request, t0: float, streaming: bool) -> Outcome:
    await asyncio.sleep(max(0.0, t0 + req.at_s - time.perf_counter()))
    got = Outcome(time.perf_counter())
    job_id = await producer.submit(
        "smollm2", "generate", [req.prompt], max_new_tokens=req.max_new_tokens
    )
    if streaming:
        async for event in producer.stream(job_id, timeout_s=600):
            if event["type"] == "token" and not got.first_s:
                got.first_s = time.perf_counter()
    [result] = await producer.result(job_id, timeout_s=600)
    got.end_s = time.perf_counter()
    got.first_s = got.first_s or got.end_s
    got.tokens = result["token_ids"]
    return got


async def run_mode(settings: Settings, requests: list[Request], mode: str) -> dict[str, Any]:
    settings = settings.replace(generate_batching=mode)
    handler = InferenceHandler(settings)
    redis = Redis.from_url(settings.redis_url)
    consumer = JobConsumer(redis, settings, handler, name=f"bench-{mode}")
    await consumer.start()
    try:
        async with Producer(settings=settings) as producer:
            warm = await producer.submit("smollm2", "generate", ["Hi"], max_new_tokens=2)
            await producer.result(warm, timeout_s=600)
            engine = await handler.engine("smollm2")
            loaded_before = engine.residency.stats.loaded_bytes
            t0 = time.perf_counter()
            outcomes = await asyncio.gather(
                *(one(producer, r, t0, mode == "continuous") for r in requests)
            )
            loaded = engine.residency.stats.loaded_bytes - loaded_before
    finally:
        await consumer.stop()
        await handler.close()
        await redis.aclose()
    tokens = sum(len(o.tokens) for o in outcomes)
    span = max(o.end_s for o in outcomes) - min(o.submit_s for o in outcomes)
    ttft = [o.first_s - o.submit_s for o in outcomes]
    e2e = [o.end_s - o.submit_s for o in outcomes]
    return {
        "mode": mode,
        "tokens": tokens,
        "tokens_per_s": tokens / span,
        "ttft_p50": pct(ttft, 50),
        "ttft_p99": pct(ttft, 99),
        "e2e_p50": pct(e2e, 50),
        "e2e_p99": pct(e2e, 99),
        "mib_per_token": loaded / tokens / 2**20,
        "outputs": [o.tokens for o in outcomes],
    }


def start_loader(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SW_")}
    env.update(
        PYTHONPATH=str(REPO),
        HF_HUB_OFFLINE="1",
        SW_REDIS_URL=settings.redis_url,
        SW_MODELS=settings.models,
        SW_CACHE_SIZE_MB=str(settings.cache_size_mb),
    )
    return subprocess.Popen(
        [sys.executable, "-m", "arq", "workers.LoaderSettings"],
        cwd=REPO,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def prepare(root: Path, settings: Settings) -> int:
    """Chunk SmolLM2 into ``root`` and fill the chunk cache; returns the weight bytes."""
    model, tokenizer = load_smollm2()
    manifest = chunk_model(model, root, name="smollm2", tokenizer=tokenizer)
    cache = ChunkCache.from_settings(settings)
    try:
        for chunk in manifest.chunks:
            cache.put(chunk.sha256, (root / chunk.file).read_bytes())
    finally:
        cache.close()
    return sum(c.size_bytes for c in manifest.chunks)


def report(rows: list[dict[str, Any]], args: argparse.Namespace, budget_mb: int) -> None:
    print(
        f"\n{args.requests} requests, Poisson {args.rate}/s (seed {args.seed}), "
        f"{args.min_new}-{args.max_new} new "
        f"tokens, budget {budget_mb} MiB (25 %), max_active_sequences "
        f"{args.max_active}, max_kv_cache_mb {args.kv_mb}"
    )
    print("| mode | tokens/s | TTFT p50 s | TTFT p99 s | e2e p50 s | e2e p99 s | MiB/token |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['tokens_per_s']:.2f} | {r['ttft_p50']:.2f} | "
            f"{r['ttft_p99']:.2f} | {r['e2e_p50']:.2f} | {r['e2e_p99']:.2f} | "
            f"{r['mib_per_token']:.1f} |"
        )
    by = {r["mode"]: r for r in rows}
    s, c = by["static"], by["continuous"]
    thr = c["tokens_per_s"] / s["tokens_per_s"]
    ttft = c["ttft_p99"] / s["ttft_p99"]
    print(
        f"throughput continuous / static: {thr:.2f}x (goal >= 1.5: "
        f"{'met' if thr >= 1.5 else 'NOT met'})"
    )
    print(
        f"TTFT p99 continuous / static: {ttft:.2f} (goal <= 0.3: "
        f"{'met' if ttft <= 0.3 else 'NOT met'})"
    )


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="sw-bench-serving-") as tmp, RedisServer() as server:
        root = Path(tmp)
        settings = Settings.from_env(
            {},
            redis_url=server.url,
            models=f"smollm2={root / 'smollm2'}",
            cache_size_mb=2048,
            max_active_sequences=args.max_active,
            max_kv_cache_mb=args.kv_mb,
            max_batch_size=16,
            batch_wait_ms=10,
            poll_block_ms=100,
            batch_timeout_s=0,
        )
        weights = prepare(root / "smollm2", settings)
        budget_mb = round(weights / 4 / 2**20)
        settings = settings.replace(memory_budget_mb=budget_mb)
        loader = start_loader(settings, root / "loader.log")
        requests = plan(args.requests, args.rate, args.seed, args.min_new, args.max_new)
        rows = []
        try:
            for mode in ("static", "continuous"):
                started = time.perf_counter()
                rows.append(await run_mode(settings, requests, mode))
                print(
                    f"{mode}: {rows[-1]['tokens']} tokens, {time.perf_counter() - started:.0f} s "
                    "with the engine load and a warm-up job",
                    flush=True,
                )
        finally:
            loader.terminate()
            loader.wait(20)
        assert rows[0]["outputs"] == rows[1]["outputs"], "the two modes generated different tokens"
        report(rows, args, budget_mb)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--rate", type=float, default=0.5, help="arrivals per second")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-active", type=int, default=16, help="SW_MAX_ACTIVE_SEQUENCES")
    parser.add_argument("--kv-mb", type=int, default=256, help="SW_MAX_KV_CACHE_MB")
    parser.add_argument("--min-new", type=int, default=8, help="fewest new tokens asked for")
    parser.add_argument("--max-new", type=int, default=64, help="most new tokens asked for")
    parser.add_argument("--quick", action="store_true", help="8 requests")
    args = parser.parse_args()
    if args.quick:
        args.requests = 8
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

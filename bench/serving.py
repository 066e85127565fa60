"""Serving generate requests: continuous batching against static batching, side by side.

SmolLM2-135M-Instruct (bundled, fp32, 513 MiB) is chunked into a temporary folder and put
into the Redis chunk cache of a private Redis (a chunk loader runs as a process, as in
production). A real :class:`~workers.jobs.consumer.JobConsumer` with the real
:class:`~workers.jobs.inference.InferenceHandler` runs in this process, under
``memory_budget_mb`` = 25 % of the weights, so every decode step streams most blocks again.
Producers submit greedy chat requests arriving as a Poisson process (``--rate`` per second,
seeded), each asking for ``--min-new`` to ``--max-new`` new tokens (uniform, seeded). The same
arrivals and requests run in three modes:

- ``static``: ``SW_GENERATE_BATCHING=static``, the worker's static batches (a batch runs to
  its end; jobs that arrive meanwhile wait for the next). It streams nothing: a client gets
  the first token with the result, so its TTFT is not comparable and is not reported;
- ``static, streaming``: static batching with the token stream of continuous batching: the
  worker's decode loop, but jobs join only when the running batch has ended. The baseline
  for time to first token: both sides stream, only the batching differs;
- ``continuous``: ``SW_GENERATE_BATCHING=continuous`` (the default): jobs join the running
  decode loop at the next step.

Rounds interleave the modes (each round runs every mode once, the order rotating); every
mode starts a fresh engine and gets the same warm-up request. Per mode (pooled over rounds):
tokens per second (all tokens / first submit to last result, median over rounds), time to
first token p50/p99 (the first text delta of the job's token stream), end-to-end latency
p50/p99, and weight bytes materialized per generated token. Goals: continuous >= 1.5x the
throughput of static, TTFT p99 <= 0.3x that of static batching that streams. Every mode
must produce the same tokens (asserted).

Usage: ``.venv/bin/python bench/serving.py [--quick] [--requests 16] [--rate 0.5]
[--rounds 2] [--min-new 8] [--max-new 48]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from figures import Figure, Profile, print_figures  # bench/, beside this script
from prompts import PROMPTS as ALL_PROMPTS
from redis.asyncio import Redis
from smollm2 import chunk_set
from static_stream import StaticDecodeLoops
from timing import pct, rotated

from producer import Producer
from sw_core.cache import ChunkCache
from sw_core.chunks.manifest import Manifest
from sw_core.local.redis_server import RedisServer
from sw_core.settings import Settings
from workers.jobs.consumer import JobConsumer
from workers.jobs.inference import InferenceHandler

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ALL_PROMPTS[:12]
STATIC, STATIC_STREAMING, CONTINUOUS = "static", "static, streaming", "continuous"
MODES = (STATIC, STATIC_STREAMING, CONTINUOUS)


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


async def one(producer: Producer, req: Request, t0: float, streaming: bool) -> Outcome:
    await asyncio.sleep(max(0.0, t0 + req.at_s - time.perf_counter()))
    got = Outcome(time.perf_counter())
    job_id = await producer.submit(
        "smollm2", "generate", [req.prompt], max_new_tokens=req.max_new_tokens
    )
    if streaming:
        async for event in producer.stream(job_id, timeout_s=900):
            if event["type"] == "token" and not got.first_s:
                got.first_s = time.perf_counter()
    [result] = await producer.result(job_id, timeout_s=900)
    got.end_s = time.perf_counter()
    got.tokens = result["token_ids"]
    return got


async def run_mode(settings: Settings, requests: list[Request], mode: str) -> dict[str, Any]:
    """One round of ``mode``: a fresh engine, a warm-up request, then the arrivals."""
    batching = "static" if mode == STATIC else "continuous"
    settings = settings.replace(generate_batching=batching)
    handler = InferenceHandler(settings)
    redis = Redis.from_url(settings.redis_url)
    consumer = JobConsumer(redis, settings, handler, name=f"bench-{batching}")
    if mode == STATIC_STREAMING:
        consumer.loops = StaticDecodeLoops.like(consumer.loops)
    await consumer.start()
    try:
        async with Producer(settings=settings) as producer:
            warm = await producer.submit("smollm2", "generate", ["Hi"], max_new_tokens=2)
            await producer.result(warm, timeout_s=900)
            engine = await handler.engine("smollm2")
            loaded_before = engine.residency.stats.loaded_bytes
            t0 = time.perf_counter()
            outcomes = await asyncio.gather(
                *(one(producer, r, t0, mode != STATIC) for r in requests)
            )
            loaded = engine.residency.stats.loaded_bytes - loaded_before
    finally:
        await consumer.stop()
        await handler.close()
        await redis.aclose()
    return {
        "tokens": sum(len(o.tokens) for o in outcomes),
        "span_s": max(o.end_s for o in outcomes) - min(o.submit_s for o in outcomes),
        "ttft": [o.first_s - o.submit_s for o in outcomes if o.first_s],
        "e2e": [o.end_s - o.submit_s for o in outcomes],
        "loaded": loaded,
        "outputs": [o.tokens for o in outcomes],
    }


def pool(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One mode's rounds: throughput the median of the rounds', latencies pooled."""
    ttft = [t for r in rounds for t in r["ttft"]]
    e2e = [t for r in rounds for t in r["e2e"]]
    tokens = sum(r["tokens"] for r in rounds)
    return {
        "tokens/s": statistics.median(r["tokens"] / r["span_s"] for r in rounds),
        "TTFT p50 s": pct(ttft, 50) if ttft else None,
        "TTFT p99 s": pct(ttft, 99) if ttft else None,
        "e2e p50 s": pct(e2e, 50),
        "e2e p99 s": pct(e2e, 99),
        "MiB/token": sum(r["loaded"] for r in rounds) / tokens / 2**20,
        "tokens": tokens,
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
    command = [sys.executable, "-m", "arq", "workers.LoaderSettings"]
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )


def prepare(folder: Path, settings: Settings) -> int:
    """Fill the chunk cache with the chunk set in ``folder``; returns the weight bytes."""
    manifest = Manifest.load(folder)
    cache = ChunkCache.from_settings(settings)
    try:
        for chunk in manifest.chunks:
            cache.put(chunk.sha256, (folder / chunk.file).read_bytes(), blake3=chunk.blake3)
    finally:
        cache.close()
    return manifest.total_bytes


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every mode in ``args.rounds`` interleaved rounds; pooled per mode."""
    with tempfile.TemporaryDirectory(prefix="sw-bench-serving-") as tmp, RedisServer() as server:
        root = Path(tmp)
        folder, _ = chunk_set(root / "smollm2")
        settings = Settings.from_env(
            {},
            redis_url=server.url,
            models=f"smollm2={folder}",
            cache_size_mb=2048,
            max_active_sequences=args.max_active,
            max_kv_cache_mb=args.kv_mb,
            max_batch_size=16,
            batch_wait_ms=10,
            poll_block_ms=100,
            batch_timeout_s=0,
        )
        weights = prepare(folder, settings)
        budget_mb = round(weights / 4 / 2**20)
        settings = settings.replace(memory_budget_mb=budget_mb)
        loader = start_loader(settings, root / "loader.log")
        requests = plan(args.requests, args.rate, args.seed, args.min_new, args.max_new)
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
        try:
            for r in range(args.rounds):
                for mode in rotated(MODES, r):
                    started = time.perf_counter()
                    runs[mode].append(await run_mode(settings, requests, mode))
                    print(
                        f"round {r + 1}, {mode}: {runs[mode][-1]['tokens']} tokens, "
                        f"{time.perf_counter() - started:.0f} s with the engine load and a "
                        "warm-up job",
                        flush=True,
                    )
        finally:
            loader.terminate()
            loader.wait(20)
    outputs = [run["outputs"] for mode in MODES for run in runs[mode]]
    assert all(o == outputs[0] for o in outputs), "the modes generated different tokens"
    return {"budget_mb": budget_mb, "modes": {mode: pool(runs[mode]) for mode in MODES}}


COLUMNS = ("tokens/s", "TTFT p50 s", "TTFT p99 s", "e2e p50 s", "e2e p99 s", "MiB/token")


def report(m: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"\n{args.requests} requests x {args.rounds} round(s), Poisson {args.rate}/s (seed "
        f"{args.seed}), {args.min_new}-{args.max_new} new tokens, budget {m['budget_mb']} MiB "
        f"(25 %), max_active_sequences {args.max_active}, max_kv_cache_mb {args.kv_mb}"
    )
    print("| mode | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for mode, row in m["modes"].items():
        cells = ["--" if row[c] is None else f"{row[c]:.2f}" for c in COLUMNS]
        print(f"| {mode} | " + " | ".join(cells) + " |")


def to_figures(m: dict[str, Any], args: argparse.Namespace) -> list[Figure]:
    modes = m["modes"]
    c, s, ss = modes[CONTINUOUS], modes[STATIC], modes[STATIC_STREAMING]
    how = (
        f"{args.requests} requests x {args.rounds} interleaved round(s), Poisson {args.rate}/s, "
        f"{args.min_new}-{args.max_new} new tokens, SmolLM2 at a 25 % budget"
    )
    out = [
        Figure(
            "serving.throughput_vs_static",
            c["tokens/s"] / s["tokens/s"],
            "x",
            "continuous / static batching, tokens/s",
            goal=">= 1.5",
            note=how,
        ),
        Figure(
            "serving.throughput_vs_static_streaming",
            c["tokens/s"] / ss["tokens/s"],
            "x",
            "continuous / static batching that streams, tokens/s",
            note=how,
        ),
        Figure(
            "serving.ttft_p99_vs_static_streaming",
            c["TTFT p99 s"] / ss["TTFT p99 s"],
            "x",
            "continuous / static batching that streams, TTFT p99",
            goal="<= 0.3",
            note=how,
        ),
    ]
    for mode, row in modes.items():
        key = mode.replace(", ", "_")
        for column in COLUMNS:
            if row[column] is None:
                continue
            unit = column.split()[-1]
            name = f"serving.{key}.{column.split(' ')[0].replace('/', '_')}"
            if column.startswith(("TTFT", "e2e")):
                name += "_" + column.split()[1]
            out.append(
                Figure(
                    name,
                    row[column],
                    unit,
                    f"serving, {mode}: {column}",
                    note=how,
                    extra={"grid": "serving modes", "row": mode, "column": column},
                )
            )
    return out


def figures(profile: Profile) -> list[Figure]:
    """Figures for ``bench/run.py``."""
    args = parse([] if not profile.quick else ["--quick"])
    args.seed = profile.seed
    m = asyncio.run(measure(args))
    report(m, args)
    return to_figures(m, args)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--rate", type=float, default=0.5, help="arrivals per second")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the modes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-active", type=int, default=16, help="SW_MAX_ACTIVE_SEQUENCES")
    parser.add_argument("--kv-mb", type=int, default=256, help="SW_MAX_KV_CACHE_MB")
    parser.add_argument("--min-new", type=int, default=8, help="fewest new tokens asked for")
    parser.add_argument("--max-new", type=int, default=48, help="most new tokens asked for")
    parser.add_argument(
        "--quick", action="store_true", help="6 requests at 1/s, 4-16 tokens, 1 round"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.rate, args.rounds = 6, 1.0, 1
        args.min_new, args.max_new = 4, 16
    return args


def main() -> int:
    args = parse()
    m = asyncio.run(measure(args))
    report(m, args)
    print_figures(to_figures(m, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Serving through the gateway, measured as a vLLM user measures a server: a request-rate
sweep with the official ``openai`` client as the load generator.

A whole deployment runs as separate processes (``bench/cluster.py``): a private Redis, a
chunk loader, one inference worker (continuous batching, the default) and the gateway
(``sw serve``), serving SmolLM2-135M-Instruct (fp32, 513 MiB). For each rate of ``--rates``
(requests per second), ``--requests`` streaming chat completions are sent by
``openai.AsyncOpenAI`` with **Poisson arrivals** (exponential gaps, seeded: the same
schedule in every run), one task per request, the prompts of ``bench/prompts.py`` in turn,
``max_tokens`` 64, ``temperature`` 0 (greedy). Before the sweep, two requests of 4 tokens
warm the deployment up (not counted). The gateway's stream deadline is raised to 30 minutes,
so a slow (loaded) machine gives slow figures, not failed requests.

Per rate, as vLLM's ``benchmark_serving`` reports them:

- output tokens/s: completion tokens (the ``usage`` of each stream's last chunk) / duration
  (first request sent to last stream ended);
- TTFT: request sent -> first content chunk, p50 / p99 over the requests;
- ITL: gaps between consecutive content chunks, p50 / p99 over every gap of every request
  (a chunk carries one token, or a few where the text held back a partial character);
- e2e: request sent -> stream ended.

Percentiles interpolate between ranks (numpy's default); with tens of requests per rate,
p99 is close to the worst request. The full profile runs the sweep twice (rates ascending,
then descending, samples pooled), at two budgets: 25 % of the weights (every decode step
streams most blocks from the chunk cache) and resident (the whole model in the budget).

Usage: ``.venv/bin/python bench/sweep.py [--quick] [--rates 0.25,0.5,1,2] [--requests 20]
[--passes 2] [--budget 25|resident] [--max-tokens 64]``; ``--quick``: 6 requests per
rate, ``max_tokens`` 8, one pass, the 25 % budget only.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
from cluster import chunk_smollm2, deployment  # bench/, beside this script
from figures import Figure, Profile, print_figures
from prompts import PROMPTS
from timing import pct

RATES = (0.25, 0.5, 1.0, 2.0)
MAX_TOKENS = 64
TTFT_LIMIT_S = 2.0
#: Budgets: the worker's memory_budget_mb for each (None: a quarter of the weights).
BUDGETS: dict[str, int | None] = {"25": None, "resident": 2048}
COLUMNS = (
    "output tokens/s",
    "TTFT p50 s",
    "TTFT p99 s",
    "ITL p50 ms",
    "ITL p99 ms",
    "e2e p99 s",
    "failed",
)


@dataclass
class Sample:
    """One request as the client saw it."""

    sent_s: float
    ttft_s: float = 0.0
    end_s: float = 0.0
    tokens: int = 0
    gaps_s: list[float] = field(default_factory=list)
    error: str = ""


def arrivals(n: int, rate: float, seed: int) -> list[float]:
    """Send times (s from the start) of a Poisson process at ``rate`` per second."""
    rng = random.Random(seed)
    at, out = 0.0, []
    for _ in range(n):
        out.append(at)
        at += rng.expovariate(rate)
    return out


async def one(
    client: openai.AsyncOpenAI, prompt: str, at_s: float, t0: float, max_tokens: int
) -> Sample:
    await asyncio.sleep(max(0.0, t0 + at_s - time.perf_counter()))
    got = Sample(time.perf_counter())
    last = 0.0
    try:
        stream = await client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.choices and chunk.choices[0].delta.content:
                if not got.ttft_s:
                    got.ttft_s = now - got.sent_s
                else:
                    got.gaps_s.append(now - last)
                last = now
            if chunk.usage is not None:
                got.tokens = chunk.usage.completion_tokens
    except openai.APIError as exc:
        got.error = f"{type(exc).__name__}: {exc}"
    got.end_s = time.perf_counter()
    return got


async def run_rate(
    url: str, rate: float, n: int, seed: int, max_tokens: int = MAX_TOKENS
) -> tuple[list[Sample], float]:
    """``n`` requests at ``rate``; the samples and the duration (first send to last end)."""
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=900)
    try:
        t0 = time.perf_counter() + 0.05
        schedule = arrivals(n, rate, seed)
        samples = await asyncio.gather(
            *(
                one(client, PROMPTS[i % len(PROMPTS)], at, t0, max_tokens)
                for i, at in enumerate(schedule)
            )
        )
    finally:
        await client.close()
    return list(samples), max(s.end_s for s in samples) - min(s.sent_s for s in samples)


def summarize(samples: list[Sample], duration_s: float) -> dict[str, float]:
    ok = [s for s in samples if not s.error and s.ttft_s]
    if not ok:
        raise RuntimeError(f"no request succeeded: {samples[0].error if samples else 'none'}")
    gaps = [g for s in ok for g in s.gaps_s] or [0.0]
    tpot = [(s.end_s - s.sent_s - s.ttft_s) / (s.tokens - 1) for s in ok if s.tokens > 1]
    return {
        "requests": len(samples),
        "failed": len(samples) - len(ok),
        "tokens": sum(s.tokens for s in ok),
        "output tokens/s": sum(s.tokens for s in ok) / duration_s,
        "TTFT p50 s": pct([s.ttft_s for s in ok], 50),
        "TTFT p99 s": pct([s.ttft_s for s in ok], 99),
        "ITL p50 ms": 1e3 * pct(gaps, 50),
        "ITL p99 ms": 1e3 * pct(gaps, 99),
        "e2e p99 s": pct([s.end_s - s.sent_s for s in ok], 99),
        "TPOT p50 ms": 1e3 * statistics.median(tpot) if tpot else 0.0,
    }


async def sweep(
    url: str, rates: tuple[float, ...], n: int, passes: int, seed: int, max_tokens: int
) -> dict:
    """Every rate ``passes`` times (ascending, then descending, ...); samples pooled."""
    warm, _ = await run_rate(url, 10.0, 2, seed, max_tokens=4)  # warm-up, not counted
    errors = [s.error for s in warm if s.error]
    if errors:
        raise RuntimeError(f"warm-up failed: {errors}")
    pooled: dict[float, list[Sample]] = {r: [] for r in rates}
    durations: dict[float, float] = {r: 0.0 for r in rates}
    for p in range(passes):
        for rate in rates if p % 2 == 0 else rates[::-1]:
            at_seed = seed + rates.index(rate) + 100 * p
            samples, duration_s = await run_rate(url, rate, n, at_seed, max_tokens)
            pooled[rate] += samples
            durations[rate] += duration_s
            row = summarize(samples, duration_s)
            print(
                f"  pass {p + 1}, {rate:g} req/s: {row['tokens']} tokens in {duration_s:.1f} s,"
                f" TTFT p99 {row['TTFT p99 s']:.2f} s, ITL p50 {row['ITL p50 ms']:.0f} ms"
                f"{', FAILED ' + str(row['failed']) if row['failed'] else ''}",
                flush=True,
            )
    return {rate: summarize(pooled[rate], durations[rate]) for rate in rates}


def run_budget(
    budget: str,
    rates: tuple[float, ...],
    n: int,
    passes: int,
    seed: int,
    max_tokens: int = MAX_TOKENS,
) -> dict:
    with tempfile.TemporaryDirectory(prefix="sw-bench-sweep-") as tmp:
        folder, weights = chunk_smollm2(Path(tmp) / "smollm2")
        budget_mb = BUDGETS[budget] or round(weights / 4 / 2**20)
        settings = {"memory_budget_mb": budget_mb, "max_kv_cache_mb": 256}
        settings["gateway_timeout_s"] = 1800  # a loaded machine must not cut streams short
        started = time.perf_counter()
        with deployment(folder, Path(tmp), **settings) as dep:
            print(
                f"deployment ready in {time.perf_counter() - started:.0f} s: budget "
                f"{budget_mb} MiB, gateway {dep.url}",
                flush=True,
            )
            try:
                rows = asyncio.run(sweep(dep.url, rates, n, passes, seed, max_tokens))
            except Exception:
                print(dep.logs(), flush=True)
                raise
    return {"budget_mb": budget_mb, "rows": rows, "max_tokens": max_tokens}


def table(budget: str, result: dict[str, Any], n: int, passes: int) -> None:
    print(
        f"\nbudget {budget} ({result['budget_mb']} MiB), {n} requests per rate x {passes} "
        f"pass(es), Poisson arrivals, max_tokens {result['max_tokens']}, greedy"
    )
    print("| rate req/s | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for rate, row in result["rows"].items():
        print(f"| {rate:g} | " + " | ".join(f"{row[c]:.2f}" for c in COLUMNS) + " |")


def to_figures(budget: str, result: dict[str, Any], n: int, passes: int) -> list[Figure]:
    label = "25 % budget" if budget == "25" else "resident"
    grid = f"gateway sweep, {label}"
    how = f"{n} requests x {passes} pass(es), Poisson arrivals, max_tokens {result['max_tokens']}"
    out = []
    for rate, row in result["rows"].items():
        for column in COLUMNS:
            unit = column.split()[-1] if " " in column else ""
            out.append(
                Figure(
                    f"gateway_sweep.{budget}.r{rate:g}.{column.replace(' ', '_').replace('/', '_')}",
                    row[column],
                    unit,
                    f"{label}, {rate:g} req/s: {column}",
                    note=how,
                    extra={"grid": grid, "row": f"{rate:g}", "column": column},
                )
            )
    rates = sorted(result["rows"])
    over = [r for r in rates if result["rows"][r]["TTFT p99 s"] > TTFT_LIMIT_S]
    within = [r for r in rates if not over or r < over[0]]
    out.append(
        Figure(
            f"gateway_sweep.{budget}.max_rate_ttft_p99_2s",
            max(within, default=0.0),
            "req/s",
            f"gateway, {label}: highest swept rate up to which TTFT p99 <= 2 s",
            note=how,
        )
    )
    if over:
        out.append(
            Figure(
                f"gateway_sweep.{budget}.rate_ttft_p99_over_2s",
                over[0],
                "req/s",
                f"gateway, {label}: lowest swept rate at which TTFT p99 > 2 s",
                note=how,
            )
        )
    return out


def measure(profile: Profile) -> list[Figure]:
    budgets = profile.pick(("25",), ("25", "resident"))
    n, passes = profile.pick(6, 20), profile.pick(1, 2)
    max_tokens = profile.pick(8, MAX_TOKENS)
    out: list[Figure] = []
    for budget in budgets:
        result = run_budget(budget, RATES, n, passes, profile.seed, max_tokens)
        table(budget, result, n, passes)
        out += to_figures(budget, result, n, passes)
    return out


def figures(profile: Profile) -> list[Figure]:
    """Figures for ``bench/run.py``."""
    return measure(profile)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="6 requests per rate, max_tokens 8, one pass"
    )
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    parser.add_argument("--rates", default=",".join(f"{r:g}" for r in RATES))
    parser.add_argument("--requests", type=int, default=20, help="requests per rate and pass")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--budget", choices=list(BUDGETS), default="25")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.requests, args.passes, args.max_tokens = 6, 1, 8
    rates = tuple(float(r) for r in args.rates.split(","))
    result = run_budget(args.budget, rates, args.requests, args.passes, args.seed, args.max_tokens)
    table(args.budget, result, args.requests, args.passes)
    print_figures(to_figures(args.budget, result, args.requests, args.passes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

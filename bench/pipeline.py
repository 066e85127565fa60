"""Tiny-job throughput and latency: the Surfing Weights pipeline vs arq's own no-op jobs.

Both run side by side in one process against one private Redis (started here), with the
same number of jobs per round and the same pattern: enqueue every job as fast as the client
can, and wait until every result is stored.

- **sw**: ``Producer.submit`` -> ``sw:jobs`` -> ``JobConsumer`` (echo handler, batches) ->
  result hash; latency = ``finished_ms - submitted_ms`` of each job hash, and also as the
  client sees it (``Producer.result``, woken by the done list).
- **arq**: ``ArqRedis.enqueue_job`` -> ``arq.worker.Worker`` (msgpack serializer,
  ``poll_delay`` 0.05 s as in ``workers.Settings``) running a no-op coroutine; latency =
  ``finish_time - enqueue_time`` of each stored arq result.

Rounds alternate between the two; the table shows medians over rounds and the ratios.

Usage: ``python bench/pipeline.py [--jobs 500] [--rounds 5]`` (about 20 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis.asyncio as aioredis
from arq.connections import RedisSettings, create_pool
from arq.worker import Worker

from producer import Producer
from sw_core.keys import Keys
from sw_core.local.redis_server import RedisServer
from sw_core.pipeline.jobs import Job
from sw_core.settings import Settings
from workers.chunks.protocol import job_deserializer, job_serializer
from workers.jobs.consumer import JobConsumer

KEYS = Keys("sw")


class Echo:
    """The smallest useful handler: each job's inputs back."""

    async def run_batch(self, model: str, task: str, jobs: list[Job]) -> list[Any]:
        return [job.inputs for job in jobs]


async def noop(ctx: dict[str, Any], text: str) -> str:
    return text


async def _until(check: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the round did not finish")
        await asyncio.sleep(0.002)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def sw_round(url: str, n_jobs: int) -> dict[str, float]:
    redis = aioredis.Redis.from_url(url)
    await redis.flushall()
    settings = Settings.from_env({}, redis_url=url, models="echo=/srv/echo")
    consumer = JobConsumer(redis, settings, Echo(), name="bench")
    await consumer.start()
    try:
        async with Producer(settings=settings) as producer:
            started = time.perf_counter()
            waits: list[asyncio.Task[float]] = []

            async def observe(job_id: str, t0: float) -> float:
                await producer.result(job_id, timeout_s=60)
                return time.perf_counter() - t0

            for i in range(n_jobs):
                t0 = time.perf_counter()
                job_id = await producer.submit("echo", "embed", [f"job {i}"])
                waits.append(asyncio.create_task(observe(job_id, t0)))
            client_latencies = await asyncio.gather(*waits)
            elapsed = time.perf_counter() - started
            stored = []
            for key in await redis.keys(KEYS.job("*")):
                if key.endswith(b":done"):
                    continue
                sub, fin = await redis.hmget(key, "submitted_ms", "finished_ms")
                stored.append((int(fin) - int(sub)) / 1000)
    finally:
        await consumer.stop(grace_s=5)
        await redis.aclose()
    assert len(stored) == n_jobs
    return {
        "jobs_s": n_jobs / elapsed,
        "p50_ms": 1000 * statistics.median(stored),
        "p99_ms": 1000 * _pct(stored, 0.99),
        "client_p50_ms": 1000 * statistics.median(client_latencies),
        "client_p99_ms": 1000 * _pct(client_latencies, 0.99),
    }


async def arq_round(url: str, n_jobs: int) -> dict[str, float]:
    settings = RedisSettings.from_dsn(url)
    pool = await create_pool(
        settings, job_serializer=job_serializer, job_deserializer=job_deserializer
    )
    await pool.flushall()
    worker = Worker(
        functions=[noop],
        redis_settings=settings,
        job_serializer=job_serializer,
        job_deserializer=job_deserializer,
        poll_delay=0.05,
        handle_signals=False,
        keep_result=3600,
    )
    task = asyncio.create_task(worker.async_run())
    try:
        await asyncio.sleep(0.2)  # the worker's own start-up is not part of the round
        started = time.perf_counter()
        for i in range(n_jobs):
            await pool.enqueue_job("noop", f"job {i}")
        await _until(lambda: worker.jobs_complete >= n_jobs)
        await _until(lambda: all(t.done() for t in worker.tasks.values()))  # results stored
        elapsed = time.perf_counter() - started
        results = await pool.all_job_results()
        stored = [(r.finish_time - r.enqueue_time).total_seconds() for r in results]
    finally:
        await _until(lambda: all(t.done() for t in worker.tasks.values()), 10)
        await worker.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pool.aclose()
    assert len(stored) == n_jobs
    return {
        "jobs_s": n_jobs / elapsed,
        "p50_ms": 1000 * statistics.median(stored),
        "p99_ms": 1000 * _pct(stored, 0.99),
    }


async def bench(n_jobs: int, rounds: int) -> None:
    with RedisServer() as server:
        runs: dict[str, list[dict[str, float]]] = {"sw": [], "arq": []}
        order: list[tuple[str, Callable[[str, int], Awaitable[dict[str, float]]]]] = [
            ("sw", sw_round),
            ("arq", arq_round),
        ]
        await sw_round(server.url, 50)  # warm-up: imports, script loading
        await arq_round(server.url, 50)
        for r in range(rounds):
            for name, fn in order if r % 2 == 0 else order[::-1]:
                runs[name].append(await fn(server.url, n_jobs))

    def med(name: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[name])

    print(f"{n_jobs} tiny jobs per round, {rounds} rounds, medians (one process, one Redis)")
    print(f"{'system':<28}{'jobs/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    print(
        f"{'sw pipeline (stored)':<28}{med('sw', 'jobs_s'):>10.0f}"
        f"{med('sw', 'p50_ms'):>10.1f}{med('sw', 'p99_ms'):>10.1f}"
    )
    print(
        f"{'sw pipeline (client sees)':<28}{'':>10}"
        f"{med('sw', 'client_p50_ms'):>10.1f}{med('sw', 'client_p99_ms'):>10.1f}"
    )
    print(
        f"{'arq no-op (stored)':<28}{med('arq', 'jobs_s'):>10.0f}"
        f"{med('arq', 'p50_ms'):>10.1f}{med('arq', 'p99_ms'):>10.1f}"
    )
    ratios = [s["jobs_s"] / a["jobs_s"] for s, a in zip(runs["sw"], runs["arq"], strict=True)]
    p50_ratios = [a["p50_ms"] / s["p50_ms"] for s, a in zip(runs["sw"], runs["arq"], strict=True)]
    print(
        f"throughput ratio sw/arq: median {statistics.median(ratios):.2f} "
        f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)}); goal >= 1"
    )
    print(f"p50 latency ratio arq/sw: median {statistics.median(p50_ratios):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(bench(args.jobs, args.rounds))


if __name__ == "__main__":
    main()

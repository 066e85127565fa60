"""What the chaos tests read back from Redis: job outcomes, counters, recorded executions."""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from sw_core.keys import Keys


async def job_outcomes(redis: aioredis.Redis, keys: Keys, ids: list[str]) -> dict[str, str]:
    """job id -> ``done``, ``dead`` or the unfinished status (``unknown`` if no hash)."""
    out: dict[str, str] = {}
    for start in range(0, len(ids), 500):
        part = ids[start : start + 500]
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in part:
                pipe.hget(keys.job(job_id), "status")
            statuses = await pipe.execute()
        for job_id, status in zip(part, statuses, strict=True):
            out[job_id] = status.decode() if status else "unknown"
    return out


async def all_ended(redis: aioredis.Redis, keys: Keys, ids: list[str]) -> bool:
    outcomes = await job_outcomes(redis, keys, ids)
    return all(s in ("done", "dead") for s in outcomes.values())


async def read_stats(redis: aioredis.Redis, keys: Keys) -> dict[str, int]:
    raw = await redis.hgetall(keys.stats)
    return {k.decode(): int(v) for k, v in raw.items()}


async def recorded_events(redis: aioredis.Redis, key: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in await redis.lrange(key, 0, -1)]


async def pending_of(redis: aioredis.Redis, keys: Keys, consumer: str) -> list[str]:
    """Entry ids pending for ``consumer`` in the jobs group."""
    rows = await redis.xpending_range(keys.jobs, keys.jobs_group, "-", "+", 10_000, consumer)
    return [row["message_id"].decode() for row in rows]


async def job_ids_of_entries(redis: aioredis.Redis, keys: Keys, entry_ids: list[str]) -> list[str]:
    out = []
    for entry_id in entry_ids:
        rows = await redis.xrange(keys.jobs, entry_id, entry_id)
        if rows and b"job_id" in rows[0][1]:
            out.append(rows[0][1][b"job_id"].decode())
    return out


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]

"""What tests read back from Redis: job outcomes, counters, pending entries, dead letters and
the executions the recording handlers (:mod:`tests.support.handlers`) wrote.

``keys`` defaults to the default deployment prefix (``sw``).
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from sw_core.counters import STORAGE_BYTES_READ, SWEEP_COUNTERS
from sw_core.keys import Keys
from sw_core.settings import Settings

#: Keys of the default prefix, which the test settings use.
KEYS = Keys("sw")


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


async def read_stats(redis: aioredis.Redis, keys: Keys = KEYS) -> dict[str, int]:
    """The stats hash as ``{counter: value}``."""
    raw = await redis.hgetall(keys.stats)
    return {k.decode(): int(v) for k, v in raw.items()}


async def read_sweeps(redis: aioredis.Redis, model: str, keys: Keys = KEYS) -> dict[str, int]:
    """One model's sweep counters (``sweeps``, ``reads``, ``hits``, ``bytes``, ``hit_bytes``)
    and the storage bytes read cluster-wide (``storage_bytes_read``)."""
    raw = await redis.hgetall(keys.stats_sweeps)
    fields = {k.decode(): int(v) for k, v in raw.items()}
    out = {name: fields.get(f"{name}:{model}", 0) for name in SWEEP_COUNTERS}
    out[STORAGE_BYTES_READ] = (await read_stats(redis, keys)).get(STORAGE_BYTES_READ, 0)
    return out


def calls_key(prefix: str) -> str:
    """Redis list the recording handlers append to (``prefix``: the settings' key prefix)."""
    return f"{prefix}:test:calls"


async def recorded_events(redis: aioredis.Redis, where: str | Settings) -> list[dict[str, Any]]:
    """What the recording handlers wrote, in order: to the list ``where``, or for settings
    ``where`` to their :func:`calls_key`."""
    key = calls_key(where.key_prefix) if isinstance(where, Settings) else where
    return [json.loads(line) for line in await redis.lrange(key, 0, -1)]


async def pending_count(
    redis: aioredis.Redis, consumer: str | None = None, keys: Keys = KEYS
) -> int:
    """Entries pending in the jobs group (of ``consumer``, if given)."""
    summary = await redis.xpending(keys.jobs, keys.jobs_group)
    if consumer is None:
        return int(summary["pending"])
    for item in summary["consumers"]:
        name = item["name"].decode() if isinstance(item["name"], bytes) else item["name"]
        if name == consumer:
            return int(item["pending"])
    return 0


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


async def dead_letters(redis: aioredis.Redis, keys: Keys = KEYS) -> list[dict[str, str]]:
    """The dead-letter stream's entries as text fields (without the raw ``fields`` copy)."""
    entries = await redis.xrange(keys.dlq)
    return [
        {k.decode(): v.decode("utf-8", "replace") for k, v in fields.items() if k != b"fields"}
        for _, fields in entries
    ]


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]

"""Timing helpers every benchmark shares: interleaved rounds, medians, percentiles, CPU.

Rounds interleave the sides of a comparison and rotate their order (round ``r`` starts with
side ``r mod n``), so a slow minute of a shared machine falls on every side alike.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis

T = TypeVar("T")
Case = Callable[[], Awaitable[Any]]


def rotated(names: Sequence[T], round_index: int) -> list[T]:
    """``names`` starting at ``round_index mod len(names)``: the order of one round."""
    k = round_index % len(names) if names else 0
    return [*names[k:], *names[:k]]


def pct(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between the closest ranks,
    as numpy's default (and vLLM's benchmark) computes it."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def process_cpu_s() -> float:
    """CPU seconds of this process, all threads (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def redis_cpu_s(client: redis.Redis) -> float:
    """CPU seconds the Redis server has used (INFO cpu, main thread and children)."""
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


@dataclass
class Timings:
    """Wall seconds, process CPU seconds and Redis CPU seconds of each case, per run."""

    client: redis.Redis
    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    redis_cpu: dict[str, list[float]] = field(default_factory=dict)

    async def time(self, name: str, case: Case) -> Any:
        redis_before = redis_cpu_s(self.client)
        cpu_before = time.process_time()
        started = time.perf_counter()
        result = await case()
        wall_s = time.perf_counter() - started
        self.wall.setdefault(name, []).append(wall_s)
        self.cpu.setdefault(name, []).append(time.process_time() - cpu_before)
        self.redis_cpu.setdefault(name, []).append(redis_cpu_s(self.client) - redis_before)
        return result

    async def interleaved(self, cases: dict[str, Case], reps: int) -> None:
        """Run every case once per round, rotating the order."""
        for rep in range(reps):
            for name in rotated(list(cases), rep):
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

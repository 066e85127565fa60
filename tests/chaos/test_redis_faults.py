"""Scenario 5: Redis restarts and Redis dropping connections.

A job stream runs through two inference nodes and a loader while (a) Redis (AOF on) is
restarted, or (b) every normal client connection is killed (``CLIENT KILL TYPE normal``)
again and again. Workers and producers must reconnect by themselves: every worker process
stays up, every job a producer was told was accepted ends, and the time from Redis being
back to a fresh job completing is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest

from producer import Producer
from sw_core.local.redis_server import RedisServer
from sw_core.pipeline.registry import ModelRegistry
from tests.chaos.harness import LoadGenerator, publish_model
from tests.chaos.report import Figures
from tests.support.observe import KEYS, all_ended, job_outcomes, read_stats
from tests.support.processes import Cluster, worker_env
from tests.support.servers import S3Server
from tests.support.settings import CHAOS, fast_settings
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

NODES = ("node-a", "node-b")


async def _start(
    chaos_redis: RedisServer, chaos_client, s3: S3Server, cluster: Cluster, tmp_path: Path
):
    model = await publish_model(s3, tmp_path, n_chunks=2)
    settings = fast_settings(
        chaos_redis.url,
        CHAOS,
        **s3.settings_overrides(),
        backup_dir=str(model.backup_dir),
        retry_attempts=5,
        retry_initial_delay_s=0.5,
    )
    await ModelRegistry(chaos_client, settings).register(model.name, model.location)
    env = worker_env(
        settings, SW_HANDLER="tests.support.handlers:ChunkHandler", CHAOS_HANDLER_SLEEP_S="0.05"
    )
    for name in NODES:
        cluster.add(name, env)
    cluster.add("loader-1", env, "workers.LoaderSettings")
    await cluster.wait_registered(chaos_client, KEYS, 60)
    return model, settings


async def _probe(
    producer: Producer, model: str, cluster: Cluster, timeout_s: float
) -> float | None:
    """Seconds until a fresh job submitted through ``producer`` (connected before the fault)
    completes; None as soon as no inference worker process is left, or at the deadline."""
    started = time.monotonic()
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        if not any(w.alive for w in cluster if w.name in NODES):
            return None
        try:
            job_id = await producer.submit(model, "embed", ["probe"])
            await producer.result(job_id, timeout_s=min(3.0, max(deadline - time.monotonic(), 0.1)))
            return time.monotonic() - started
        except Exception:
            await asyncio.sleep(0.1)
    return None


async def _recover(
    producer: Producer, model: str, cluster: Cluster, chaos_client, crashed: list[str]
) -> float | None:
    """Probe; if the worker processes died, note them, restart them as a supervisor would
    (systemd, Kubernetes) and probe again -- so the durability of the jobs is still measured."""
    took = await _probe(producer, model, cluster, 30)
    if took is not None:
        return took
    for worker in cluster:
        if not worker.alive:
            crashed.append(worker.name)
            worker.start()
    await cluster.wait_registered(chaos_client, KEYS, 60)
    await _probe(producer, model, cluster, 30)
    return None


async def _summary(chaos_client, ids: list[str]) -> tuple[int, int, int]:
    outcomes = await job_outcomes(chaos_client, KEYS, ids)
    done = sum(1 for s in outcomes.values() if s == "done")
    dead = sum(1 for s in outcomes.values() if s == "dead")
    return done, dead, len(ids) - done - dead


async def test_redis_restart_loses_no_job_and_workers_reconnect(
    chaos_redis: RedisServer,
    chaos_client,
    s3: S3Server,
    cluster: Cluster,
    tmp_path: Path,
    long_mode: bool,
    figures,
) -> None:
    restarts = 3 if long_mode else 1
    outage_s = 5.0 if long_mode else 2.0
    model, settings = await _start(chaos_redis, chaos_client, s3, cluster, tmp_path)
    started = time.monotonic()
    recoveries: list[float | None] = []
    downtimes: list[float] = []
    crashed: list[str] = []
    async with LoadGenerator(settings, rate_per_s=10, model=model.name) as load:
        for _ in range(restarts):
            await asyncio.sleep(3)
            down_at = time.monotonic()
            # a restart as restart() does it (SIGTERM flushes the AOF, then start), held
            # down for a while as a real restart with a big AOF to load would be
            await asyncio.to_thread(chaos_redis.stop)
            await asyncio.sleep(outage_s)
            await asyncio.to_thread(chaos_redis.start)
            back_at = time.monotonic()
            downtimes.append(back_at - down_at)
            assert load.producer is not None
            recoveries.append(
                await _recover(load.producer, model.name, cluster, chaos_client, crashed)
            )
        await asyncio.sleep(2)
        await load.stop()
    ids, refused = list(load.ids), load.refused
    with contextlib.suppress(AssertionError):  # lost jobs are counted below
        await wait_until(lambda: all_ended(chaos_client, KEYS, ids), 90, "every job", 0.2)
    done, dead, lost = await _summary(chaos_client, ids)
    counts = await read_stats(chaos_client, KEYS)
    measured = [r for r in recoveries if r is not None]
    figures(
        Figures(
            scenario="5a Redis restart (AOF)",
            produced=len(ids),
            completed=done,
            dead_lettered=dead,
            lost=lost,
            recover_s=max(measured) if len(measured) == len(recoveries) else None,
            notes=(
                f"{restarts} restart(s) under load, Redis down {max(downtimes):.1f} s each; "
                f"{refused} submits refused during the outage (the producer was told); "
                + (
                    f"worker processes that exited on the outage: {sorted(set(crashed))} "
                    "(restarted by the test: the jobs themselves survived in the AOF)"
                    if crashed
                    else f"a fresh job completed {max(measured):.2f} s after Redis was back"
                )
            ),
            duration_s=time.monotonic() - started,
            extra={
                "recovery (s)": [None if r is None else round(r, 2) for r in recoveries],
                "refusals (first)": load.refusals[:3],
                "errors": {k: v for k, v in counts.items() if k.startswith("errors")},
            },
        )
    )
    assert lost == 0
    assert not crashed, f"worker processes exited: {crashed}\n{cluster.logs(1500)}"


async def test_redis_dropping_connections_loses_no_job_and_workers_reconnect(
    chaos_redis: RedisServer,
    chaos_client,
    s3: S3Server,
    cluster: Cluster,
    tmp_path: Path,
    long_mode: bool,
    figures,
) -> None:
    storm_s = 60.0 if long_mode else 8.0
    model, settings = await _start(chaos_redis, chaos_client, s3, cluster, tmp_path)
    started = time.monotonic()
    kills = dropped = 0
    async with LoadGenerator(settings, rate_per_s=10, model=model.name) as load:
        await asyncio.sleep(1)
        while time.monotonic() - started < storm_s:
            dropped += int(await chaos_client.execute_command("CLIENT", "KILL", "TYPE", "normal"))
            kills += 1
            await asyncio.sleep(0.5)
        storm_end = time.monotonic()
        assert load.producer is not None
        crashed: list[str] = []
        recover_s = await _recover(load.producer, model.name, cluster, chaos_client, crashed)
        await load.stop()
    ids, refused = list(load.ids), load.refused
    with contextlib.suppress(AssertionError):  # lost jobs are counted below
        await wait_until(lambda: all_ended(chaos_client, KEYS, ids), 90, "every job", 0.2)
    done, dead, lost = await _summary(chaos_client, ids)
    figures(
        Figures(
            scenario="5b Redis drops connections",
            produced=len(ids),
            completed=done,
            dead_lettered=dead,
            lost=lost,
            recover_s=recover_s,
            notes=(
                f"CLIENT KILL TYPE normal x{kills} over {storm_end - started:.0f} s "
                f"({dropped} connections dropped); {refused} submits refused; worker "
                f"processes that exited: {sorted(set(crashed)) or 'none'}"
            ),
            duration_s=time.monotonic() - started,
            extra={"refusals (first)": load.refusals[:3]},
        )
    )
    assert lost == 0
    assert not crashed, f"worker processes exited: {crashed}\n{cluster.logs(1500)}"

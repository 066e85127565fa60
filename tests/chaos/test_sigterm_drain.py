"""Scenario 2: SIGTERM drain.

Two inference nodes share a backlog of slow jobs. One gets SIGTERM while it runs a batch
with more entries waiting: the batch in flight must finish within ``shutdown_grace_s`` on
the leaving worker, the entries it had not started must be handed back and run by the
other worker (reclaiming is off, so only the hand-back can move them), nothing may run
twice, the exit is clean (status 0), every submit is counted once and nothing is counted as
a failure.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from producer import Producer
from sw_core.counters import COMPLETED, ERRORS, FAILED, TOTAL_REQUESTS
from sw_core.local.redis_server import RedisServer
from sw_core.pipeline.registry import ModelRegistry
from tests.chaos.harness import publish_model
from tests.chaos.report import Figures
from tests.support.observe import (
    KEYS,
    calls_key,
    job_ids_of_entries,
    pending_of,
    read_stats,
    recorded_events,
)
from tests.support.processes import Cluster, worker_env
from tests.support.servers import S3Server
from tests.support.settings import CHAOS, fast_settings
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


async def _running_on(producer: Producer, ids: list[str], worker: str) -> list[str]:
    out = []
    for job_id in ids:
        status = await producer.status(job_id)
        if status["status"] == "running" and status.get("worker") == worker:
            out.append(job_id)
    return out


async def test_sigterm_finishes_in_flight_and_hands_back_the_rest(
    chaos_redis: RedisServer,
    chaos_client,
    s3: S3Server,
    cluster: Cluster,
    tmp_path: Path,
    long_mode: bool,
    figures,
) -> None:
    rounds = 3 if long_mode else 1
    grace_s = 10.0
    model = await publish_model(s3, tmp_path, n_chunks=2)
    settings = fast_settings(
        chaos_redis.url,
        CHAOS,
        **s3.settings_overrides(),
        backup_dir=str(model.backup_dir),
        claim_idle_ms=600_000,  # no reclaiming: only the hand-back moves entries
        max_batch_size=2,
        shutdown_grace_s=grace_s,
    )
    await ModelRegistry(chaos_client, settings).register(model.name, model.location)
    env = worker_env(
        settings, SW_HANDLER="tests.support.handlers:ChunkHandler", CHAOS_HANDLER_SLEEP_S="1.5"
    )
    cluster.add("stayer", env)
    started = time.monotonic()
    drains: list[float] = []
    in_flight_total = handed_total = 0
    all_ids: list[str] = []
    async with Producer(settings=settings) as producer:
        for round_no in range(rounds):
            leaver = f"leaver-{round_no}"
            cluster.add(leaver, env)
            await cluster.wait_registered(chaos_client, KEYS, 60, names=[leaver, "stayer"])
            ids = [
                await producer.submit(model.name, "embed", [f"r{round_no} job {i}"])
                for i in range(12)
            ]
            all_ids += ids

            async def busy_with_backlog(name: str = leaver, batch: list[str] = ids) -> bool:
                running = await _running_on(producer, batch, name)
                held = await pending_of(chaos_client, KEYS, name)
                return bool(running) and len(held) > len(running)

            await wait_until(busy_with_backlog, 30, f"{leaver} to run a batch with a backlog")
            in_flight = await _running_on(producer, ids, leaver)
            held = await job_ids_of_entries(
                chaos_client, KEYS, await pending_of(chaos_client, KEYS, leaver)
            )
            untouched = set(held) - set(in_flight)
            term_at = time.monotonic()
            cluster[leaver].terminate()
            code = await asyncio.to_thread(cluster[leaver].wait, grace_s + 15)
            drains.append(time.monotonic() - term_at)
            assert code == 0, cluster[leaver].log_text()[-3000:]
            results = await asyncio.gather(*(producer.result(j, timeout_s=90) for j in ids))
            assert [r["job_id"] for r in results] == ids
            finals = {j: await producer.status(j) for j in ids}
            for job_id in in_flight:  # finished by the leaver during its drain
                assert finals[job_id]["worker"] == leaver, finals[job_id]
                assert finals[job_id]["attempts"] == 1
            for job_id in untouched:  # handed back at once, run by the stayer
                assert finals[job_id]["worker"] == "stayer", finals[job_id]
            assert in_flight and untouched
            assert not await chaos_client.exists(KEYS.worker(leaver))  # deregistered
            in_flight_total += len(in_flight)
            handed_total += len(untouched)

    events = await recorded_events(chaos_client, calls_key(settings.key_prefix))
    starts = Counter(e["job_id"] for e in events if e["event"] == "start")
    duplicated = sum(n - 1 for n in starts.values())
    counts = await read_stats(chaos_client, KEYS)
    figures(
        Figures(
            scenario="2 SIGTERM drain",
            produced=len(all_ids),
            completed=counts.get(COMPLETED, 0),
            dead_lettered=counts.get("dead_lettered", 0),
            lost=len(all_ids) - counts.get(COMPLETED, 0) - counts.get("dead_lettered", 0),
            duplicated=duplicated,
            recover_s=max(drains),
            notes=(
                f"{rounds} SIGTERM(s) mid-batch: {in_flight_total} in-flight jobs finished by "
                f"the leaver, {handed_total} handed back and run by the stayer; exit 0 after "
                f"{max(drains):.1f} s at most (grace {grace_s:g} s); failures counted: "
                f"{counts.get(FAILED, 0)}"
            ),
            duration_s=time.monotonic() - started,
            extra={"drain times (s)": [round(d, 2) for d in drains]},
        )
    )
    assert duplicated == 0
    assert counts.get(COMPLETED, 0) == len(all_ids)
    assert counts.get(TOTAL_REQUESTS, 0) == len(all_ids)  # each submit counted once
    assert FAILED not in counts and ERRORS not in counts
    assert max(drains) < grace_s + 10

"""Scenario 3: storage outage.

Jobs need every chunk of a model stored in S3 (moto) with a backup folder behind it.

1. A steady job stream with S3 up: jobs complete (chunks from S3).
2. S3 stopped in the middle of the stream, cache emptied: loads fail over to the backup
   folder; every job completes.
3. S3 and the backup both gone: loads fail with ``StorageError`` (transient), jobs retry
   with backoff and dead-letter with ``StorageError`` once their attempts are spent.
4. Both back: ``sw dlq replay --all`` (the real CLI) completes every dead-lettered job.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from producer import Producer
from sw_core.cache import ChunkCache
from sw_core.counters import STORAGE_FAILOVERS
from sw_core.local.redis_server import RedisServer
from sw_core.pipeline.registry import ModelRegistry
from tests.chaos.harness import LoadGenerator, publish_model
from tests.chaos.report import Figures
from tests.support.observe import KEYS, all_ended, job_outcomes, read_stats
from tests.support.processes import Cluster, settings_env, worker_env
from tests.support.servers import S3Server
from tests.support.settings import CHAOS, fast_settings
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


async def _done_count(client, ids: list[str], n: int) -> bool:
    outcomes = await job_outcomes(client, KEYS, list(ids))
    return sum(1 for v in outcomes.values() if v == "done") >= n


async def _submit(producer: Producer, model: str, n: int, tag: str) -> list[str]:
    return [await producer.submit(model, "embed", [f"{tag} {i}"]) for i in range(n)]


async def test_storage_outage_fails_over_then_dead_letters_then_replays(
    chaos_redis: RedisServer,
    chaos_client,
    s3: S3Server,
    cluster: Cluster,
    tmp_path: Path,
    long_mode: bool,
    figures,
) -> None:
    per_phase = 30 if long_mode else 10
    outage_s = 20.0 if long_mode else 3.0
    started = time.monotonic()
    model = await publish_model(s3, tmp_path, n_chunks=3)
    settings = fast_settings(
        chaos_redis.url,
        CHAOS,
        **s3.settings_overrides(),
        backup_dir=str(model.backup_dir),
        retry_attempts=3,
        retry_initial_delay_s=0.2,
        retry_max_delay_s=1.0,
    )
    await ModelRegistry(chaos_client, settings).register(model.name, model.location)
    env = worker_env(settings, SW_HANDLER="tests.support.handlers:ChunkHandler")
    cluster.add("node-a", env)
    cluster.add("node-b", env)
    cluster.add("loader-1", env, "workers.LoaderSettings")
    await cluster.wait_registered(chaos_client, KEYS, 60)
    cache = ChunkCache.from_settings(settings)
    phases: dict[str, dict[str, object]] = {}
    async with Producer(settings=settings) as producer:
        # 1-2. a steady stream; S3 stops in the middle of it (cache emptied at the same time,
        # so the next loads must come from storage): the backup folder takes over
        async with LoadGenerator(settings, rate_per_s=8, model=model.name) as load:
            await wait_until(
                lambda: _done_count(chaos_client, load.ids, 5), 60, "jobs served from S3"
            )
            before = (await read_stats(chaos_client, KEYS)).get(STORAGE_FAILOVERS, 0)
            s3.stop()
            stopped_at = len(load.ids)
            await asyncio.to_thread(cache.clear)
            t0 = time.monotonic()
            await asyncio.sleep(outage_s)
            await load.stop()
            steady = list(load.ids)
        await wait_until(lambda: all_ended(chaos_client, KEYS, steady), 90, "the steady jobs")
        phase2_s = time.monotonic() - t0
        assert set((await job_outcomes(chaos_client, KEYS, steady)).values()) == {"done"}

        async def failovers_counted() -> bool:
            counts = await read_stats(chaos_client, KEYS)
            return counts.get(STORAGE_FAILOVERS, 0) > before

        await wait_until(failovers_counted, 10, "storage_failovers to be counted")
        phases["S3 stopped mid-stream, backup up"] = {
            "jobs before the stop": stopped_at,
            "jobs after the stop": len(steady) - stopped_at,
            "all done (s after the stop)": round(phase2_s, 2),
        }

        # 3. both gone: retries with backoff, then dead letters with StorageError
        away = model.backup_folder.with_name(model.backup_folder.name + ".away")
        model.backup_folder.rename(away)
        await asyncio.to_thread(cache.clear)
        t0 = time.monotonic()
        doomed = await _submit(producer, model.name, per_phase, "doomed")
        await wait_until(
            lambda: all_ended(chaos_client, KEYS, doomed), 120, "phase 3 jobs to dead-letter"
        )
        phase3_s = time.monotonic() - t0
        assert set((await job_outcomes(chaos_client, KEYS, doomed)).values()) == {"dead"}
        letters = await chaos_client.xrange(KEYS.dlq)
        assert len(letters) == per_phase
        for _, letter in letters:
            assert letter[b"error_type"] == b"StorageError", letter
            assert letter[b"reason"] == b"retries_exhausted", letter
            assert letter[b"attempts"] == b"3", letter
            assert b"any backend" in letter[b"error"], letter
        statuses = [await producer.status(j) for j in doomed]
        assert {s["error_type"] for s in statuses} == {"StorageError"}
        phases["S3 and backup down"] = {
            "jobs": per_phase,
            "all dead-lettered in (s)": round(phase3_s, 2),
            "attempts each": 3,
        }

        # 4. recovery: both back, the CLI replays every dead letter
        s3.start()
        away.rename(model.backup_folder)
        t0 = time.monotonic()
        replay = await asyncio.to_thread(
            subprocess.run,
            [str(Path(sys.executable).parent / "sw"), "dlq", "replay", "--all"],
            env={**worker_env(settings), **settings_env(settings)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert replay.returncode == 0, replay.stderr
        assert f"{per_phase} replayed, 0 left" in replay.stdout, replay.stdout
        results = await asyncio.gather(*(producer.result(j, timeout_s=60) for j in doomed))
        recover_s = time.monotonic() - t0
        assert [r["job_id"] for r in results] == doomed
        assert await chaos_client.xlen(KEYS.dlq) == 0

    cache.close()
    ids = steady + doomed
    outcomes = await job_outcomes(chaos_client, KEYS, ids)
    completed = sum(1 for s in outcomes.values() if s == "done")
    counts = await read_stats(chaos_client, KEYS)
    figures(
        Figures(
            scenario="3 storage outage",
            produced=len(ids),
            completed=completed,
            dead_lettered=per_phase,
            lost=len(ids) - completed,
            recover_s=recover_s,
            notes=(
                f"S3 stopped mid-stream: {len(steady) - stopped_at} later jobs done from the "
                f"backup; S3 and "
                f"backup down: {per_phase} jobs dead-lettered (StorageError, 3 attempts) in "
                f"{phase3_s:.1f} s; `sw dlq replay --all` completed them in {recover_s:.1f} s"
            ),
            duration_s=time.monotonic() - started,
            extra={
                **phases,
                "storage_failovers": counts.get(STORAGE_FAILOVERS, 0),
                "storage_retries": counts.get("storage_retries", 0),
                "errors:StorageError": counts.get("errors:StorageError", 0),
            },
        )
    )
    assert completed == len(ids)

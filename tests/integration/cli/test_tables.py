"""``sw dlq list`` and ``sw stats`` fit 80 columns when piped, ids whole."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from producer import Producer
from sw_core.pipeline.jobs import decode_entry
from sw_core.pipeline.store import JobStore
from tests.support.cli import run_sw
from tests.support.settings import OPS, fast_settings

ERROR = (
    "model 'minilm' is not registered: run `sw register minilm LOCATION` or add it to "
    "SW_MODELS (a long message that needs more than one line at 80 columns)"
)


async def _dead_letters(settings) -> list[str]:
    client = aioredis.Redis.from_url(settings.redis_url)
    store = JobStore(client, settings)
    await store.ensure_group()
    async with Producer(settings=settings) as p:
        ids = [await p.submit("minilm", "embed", [f"text {i}"]) for i in range(3)]
    for entry_id, fields in await store.read("vm-worker-1234", ">", 10, None):
        job = decode_entry(entry_id, fields, settings)
        await store.dead_letter_job(job, "ModelError", ERROR, "permanent", "vm-worker-1234")
    await client.hset(
        "sw:worker:vm-worker-1234",
        mapping={
            "kind": "inference",
            "host": "vm",
            "pid": "1234",
            "beat_ms": int(time.time() * 1000),
            "started_ms": int(time.time() * 1000),
            "current_model": "minilm",
            "jobs_done": "7",
        },
    )
    await client.zadd("sw:workers", {"vm-worker-1234": int(time.time() * 1000)})
    letters = [entry_id.decode() for entry_id, _ in await client.xrange("sw:dlq")]
    await client.aclose()
    return ids + letters


def _wide(text: str) -> list[str]:
    return [line for line in text.splitlines() if len(line) > 80]


async def test_dlq_list_and_stats_fit_80_columns_with_whole_ids(redis_url: str) -> None:
    settings = fast_settings(redis_url, OPS, models="minilm=/srv/minilm")
    ids = await _dead_letters(settings)
    listed = run_sw(["dlq", "list"], settings)
    assert listed.returncode == 0, listed.stderr
    assert not _wide(listed.stdout), listed.stdout
    for full_id in ids:  # 3 job ids, 3 letter ids: each pasteable
        assert full_id in listed.stdout, (full_id, listed.stdout)
    flat = " ".join(listed.stdout.split())
    assert "ModelError: " + " ".join(ERROR.split()) in flat  # the error column is not dropped
    stats = run_sw(["stats"], settings)
    assert stats.returncode == 0, stats.stderr
    assert not _wide(stats.stdout), stats.stdout
    assert "…" not in stats.stdout, stats.stdout  # no cell cut
    assert "(SW_ALERT_ERROR_RATE)" in stats.stdout  # the alert line wraps instead

"""Cancel, deadlines, a worker killed mid-generation and ``sw submit --stream``, with real
worker processes and real Redis."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from producer import Producer
from sw_core.exceptions import JobCancelledError, JobExpiredError
from sw_core.keys import Keys
from tests.support.observe import read_stats
from tests.support.processes import REPO, start_worker, worker_env
from tests.support.serving import (
    TinyChat,
    events_of,
    first_token,
    reference_tokens,
    serving_settings,
    text_after_last_restart,
    workers,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow
KEYS = Keys()


async def test_cancel_and_deadlines_queued_and_running(
    redis_url: str, tiny_chat: TinyChat, tmp_path: Path
) -> None:
    settings = serving_settings(redis_url, tiny_chat)
    redis = aioredis.Redis.from_url(redis_url)
    async with Producer(settings=settings) as producer:
        # queued: no worker runs yet
        queued = await producer.submit("tiny", "generate", ["never run me"], max_new_tokens=5)
        assert await producer.cancel(queued) == "cancelled"
        late = await producer.submit("tiny", "generate", ["too late"], deadline_s=0.3)
        hand = (
            await redis.xadd(
                KEYS.jobs,
                {"model": "tiny", "task": "generate", "text": "by hand", "deadline_s": "0.3"},
            )
        ).decode()
        await asyncio.sleep(0.8)
        with workers(settings, tmp_path):
            await wait_until(lambda: _xlen_is(redis, 0), 120, "queued jobs ended unstarted")
            running = await producer.submit("tiny", "generate", ["Tell me"], max_new_tokens=900)
            seen = [e async for e in first_token(producer, running)]
            assert seen[-1]["type"] == "token"
            assert await producer.cancel(running) == "cancelling"
            cancelled_events = await events_of(producer, running)
            expiring = await producer.submit(
                "tiny", "generate", ["Tell me more"], max_new_tokens=900, deadline_s=3
            )
            expired_events = await events_of(producer, expiring)
        for job_id in (queued, running):
            with pytest.raises(JobCancelledError):
                await producer.result(job_id, timeout_s=5)
        for job_id in (late, hand, expiring):
            with pytest.raises(JobExpiredError):
                await producer.result(job_id, timeout_s=5)
        statuses = {j: (await producer.status(j)) for j in (queued, late, hand)}
    counters = await read_stats(redis)
    dlq = await redis.xlen(KEYS.dlq)
    streams = [await redis.exists(KEYS.job_tokens(j)) for j in (queued, late, hand)]
    await redis.aclose()
    # queued ones never started: no worker, no start time, no token stream
    assert {j: s["status"] for j, s in statuses.items()} == {
        queued: "cancelled",
        late: "expired",
        hand: "expired",
    }
    assert all("started_ms" not in s for s in statuses.values())
    assert streams == [0, 0, 0]
    # running ones stopped at a step: tokens came, then the final status
    assert cancelled_events[-1] == {"type": "final", "status": "cancelled"}
    assert expired_events[-1] == {"type": "final", "status": "expired"}
    assert any(e["type"] == "token" for e in expired_events)
    assert not any(e["type"] == "end" for e in cancelled_events + expired_events)
    assert counters["cancelled"] == 2 and counters["expired"] == 3
    assert counters.get("errors", 0) == 0 and counters.get("dead_lettered", 0) == 0
    assert dlq == 0


async def test_kill_9_mid_generation_restarts_the_stream(
    redis_url: str, tiny_chat: TinyChat, tmp_path: Path
) -> None:
    settings = serving_settings(redis_url, tiny_chat)
    prompt, new = "Write a poem about weights.", 250
    with workers(settings, tmp_path, names=("victim",)) as procs:
        async with Producer(settings=settings) as producer:
            job_id = await producer.submit("tiny", "generate", [prompt], max_new_tokens=new)
            tokens = 0
            async for event in producer.stream(job_id, timeout_s=120):
                tokens += event["type"] == "token"
                if tokens >= 3:
                    break
            procs[1].send_signal(signal.SIGKILL)
            procs[1].wait(10)
            procs.append(
                start_worker(worker_env(settings, SW_WORKER_NAME="heir"), tmp_path / "heir.log")
            )
            events = await events_of(producer, job_id, timeout_s=180)
            [result] = await producer.result(job_id, timeout_s=60)
            status = await producer.status(job_id)
    assert any(e["type"] == "restart" for e in events), events[:5]
    assert result["token_ids"] == reference_tokens(tiny_chat, prompt, new)
    assert text_after_last_restart(events) == result["text"]
    assert status["status"] == "done" and status["worker"] == "heir"
    assert {k: events[-1][k] for k in ("type", "status")} == {"type": "final", "status": "done"}


def test_sw_submit_stream_prints_tokens_before_the_job_ends(
    redis_url: str, tiny_chat: TinyChat, tmp_path: Path
) -> None:
    import redis as sync_redis

    settings = serving_settings(redis_url, tiny_chat)
    env = dict(os.environ, PYTHONPATH=str(REPO), SW_MODELS=settings.models)
    argv = [
        sys.executable,
        "-c",
        "import sys; from sw_core.cli import main; sys.exit(main())",
        "submit",
        "tiny",
        "--task",
        "generate",
        "--text",
        "Tell me",
        "--param",
        "max_new_tokens=400",
        "--stream",
        "--timeout",
        "120",
        "--redis-url",
        redis_url,
    ]
    client = sync_redis.Redis.from_url(redis_url)
    with workers(settings, tmp_path):
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        # stdout holds data only (the text, then the result); the job id goes to stderr
        queued = proc.stderr.readline().decode()
        job_id = re.search(r"job (\S+) queued", queued).group(1)  # type: ignore[union-attr]
        first = proc.stdout.read1(4096)  # the first text, as soon as it is printed
        status_then = client.hget(KEYS.job(job_id), "status")
        rest, err = proc.communicate(timeout=180)
    client.close()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert first and status_then == b"running"
    text, _, last = (first + rest).decode().rstrip("\n").rpartition("\n")
    [result] = json.loads(last)
    assert text.rstrip("\n") == result["text"].rstrip("\n")


async def _xlen_is(redis: aioredis.Redis, n: int) -> bool:
    return int(await redis.xlen(KEYS.jobs)) == n

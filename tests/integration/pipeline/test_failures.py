"""Malformed entries, retries with backoff, dead letters and poison entries (real Redis)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgpack
import pytest

from producer import Producer
from sw_core.counters import (
    COMPLETED,
    DEAD_LETTERED,
    ERRORS,
    FAILED,
    RETRIED,
    TOTAL_REQUESTS,
    error_counter,
)
from sw_core.exceptions import BatchTimeoutError, JobError, JobTimeoutError, StorageError
from sw_core.pipeline.jobs import Job, encode_job
from tests.support.handlers import AlwaysTransientHandler, BrokenHandler, EchoHandler, FlakyHandler
from tests.support.observe import KEYS, dead_letters, pending_count, read_stats, recorded_events
from tests.support.pipeline import consumers
from tests.support.settings import fast_settings
from tests.support.waiting import wait_until


def malformed_entries() -> list[dict[str, Any]]:
    """50 bad entries: garbage, broken msgpack, unknown model/task, oversized, bad params."""
    good = encode_job(Job(job_id="x", model="m1", task="embed", inputs=["a"], counted=False))
    entries: list[dict[str, Any]] = []
    for i in range(10):  # garbage fields
        entries.append({"garbage": f"value-{i}", "more": "junk"})
    for i in range(10):  # producer format, broken msgpack
        entries.append({**good, "job_id": f"broken-{i}", "payload": b"\xc1" + bytes([i]) * 5})
    for i in range(10):  # unknown model (valid otherwise)
        entries.append({"model": f"ghost{i}", "task": "embed", "text": "hi"})
    for i in range(5):  # oversized
        entries.append({"model": "m1", "task": "embed", "text": "x" * (1 << 20) + str(i)})
    for i in range(10):  # unknown task
        entries.append({"model": "m1", "task": f"dance{i}", "text": "hi"})
    for i in range(5):  # params of the wrong type / wrong inputs
        entries.append({"model": "m1", "task": "generate", "text": "hi", "max_new_tokens": f"n{i}"})
    assert len(entries) == 50
    return entries


async def test_fifty_malformed_entries_become_readable_dead_letters(
    redis_url: str, redis_client
) -> None:
    settings = fast_settings(redis_url)
    async with consumers(settings, [EchoHandler(settings)]), Producer(settings=settings) as p:
        for fields in malformed_entries():
            await redis_client.xadd(KEYS.jobs, fields)
        good = await p.submit("m1", "embed", ["still serving"])
        assert (await p.result(good, timeout_s=20))["inputs"] == ["still serving"]
        await wait_until(
            lambda: _xlen(redis_client, KEYS.dlq, 50), timeout_s=10, what="50 dead letters"
        )
    letters = await dead_letters(redis_client)
    assert len(letters) == 50
    reasons = count_by(letters, "error")
    assert sum(v for k, v in reasons.items() if "lacks the field" in k) == 10
    assert sum(v for k, v in reasons.items() if "not valid msgpack" in k) == 10
    assert sum(v for k, v in reasons.items() if "is not registered" in k) == 10
    assert sum(v for k, v in reasons.items() if "max_payload_bytes" in k) == 5
    assert sum(v for k, v in reasons.items() if "unknown task" in k) == 10
    assert sum(v for k, v in reasons.items() if "is not an integer" in k) == 5
    assert {letter["reason"] for letter in letters} == {"malformed", "permanent"}
    assert all(letter["worker"] == "w0" and letter["error_type"] for letter in letters)
    # the dead letter keeps the entry's fields (cut to 64 KiB) for a replay
    raw = await redis_client.xrange(KEYS.dlq, count=1)
    kept = msgpack.unpackb(raw[0][1][b"fields"], raw=False)
    assert kept == {"garbage": b"value-0", "more": b"junk"}
    assert await pending_count(redis_client) == 0
    counts = await read_stats(redis_client)
    assert counts[DEAD_LETTERED] == 50 and counts[ERRORS] == 50 and counts[FAILED] == 50
    assert counts[error_counter("JobError")] == 40 and counts[error_counter("ModelError")] == 10
    assert counts[TOTAL_REQUESTS] == 51 and counts[COMPLETED] == 1
    # a broken producer-format job is findable by its id
    async with Producer(settings=settings) as p:
        with pytest.raises(JobError, match="not valid msgpack"):
            await p.result("broken-3", timeout_s=1)


def count_by(rows: list[dict[str, str]], field: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in rows:
        out[row[field]] = out.get(row[field], 0) + 1
    return out


async def _xlen(redis: Any, key: str, n: int) -> bool:
    return await redis.xlen(key) >= n


async def test_transient_twice_then_success_on_attempt_three(redis_url: str, redis_client) -> None:
    settings = fast_settings(
        redis_url, retry_initial_delay_s=0.2, retry_multiplier=2.0, retry_jitter=0.1
    )
    async with consumers(settings, [FlakyHandler(settings)]), Producer(settings=settings) as p:
        job_id = await p.submit("m1", "embed", ["fail=2 please"])
        result = await p.result(job_id, timeout_s=15)
        status = await p.status(job_id)
    assert result["attempt"] == 3 and status["attempts"] == 3 and status["status"] == "done"
    assert "error" not in status
    runs = [c for c in await recorded_events(redis_client, settings) if c["job_id"] == job_id]
    assert [c["attempt"] for c in runs] == [1, 2, 3]
    first_gap = runs[1]["t"] - runs[0]["t"]
    second_gap = runs[2]["t"] - runs[1]["t"]
    # backoff 0.2 s then 0.4 s, +-10 % jitter, plus at most a little scheduling latency
    assert 0.18 <= first_gap <= 0.22 + 0.15, first_gap
    assert 0.36 <= second_gap <= 0.44 + 0.15, second_gap
    counts = await read_stats(redis_client)
    assert counts[COMPLETED] == 1 and counts[TOTAL_REQUESTS] == 1
    assert counts[RETRIED] == 2 and counts[FAILED] == 2 and counts[ERRORS] == 2
    assert counts[error_counter("WeightServerError")] == 2
    assert DEAD_LETTERED not in counts
    assert await redis_client.zcard(KEYS.retries) == 0
    assert await pending_count(redis_client) == 0


async def test_always_transient_is_dead_lettered_after_exactly_retry_attempts(
    redis_url: str, redis_client
) -> None:
    settings = fast_settings(redis_url, retry_attempts=3, retry_initial_delay_s=0.05)
    handler = AlwaysTransientHandler(settings)
    async with consumers(settings, [handler]), Producer(settings=settings) as p:
        job_id = await p.submit("m1", "embed", ["doomed"])
        with pytest.raises(StorageError, match="simulated outage on attempt 3"):
            await p.result(job_id, timeout_s=15)
        status = await p.status(job_id)
    assert status["status"] == "dead" and status["attempts"] == 3
    runs = [c["attempt"] for c in await recorded_events(redis_client, settings)]
    assert runs == [1, 2, 3]
    (letter,) = await dead_letters(redis_client)
    assert letter["job_id"] == job_id and letter["attempts"] == "3"
    assert letter["reason"] == "retries_exhausted" and letter["error_type"] == "StorageError"
    assert int(letter["first_failure_ms"]) < int(letter["last_failure_ms"])
    assert int(letter["submitted_ms"]) <= int(letter["first_failure_ms"])
    counts = await read_stats(redis_client)
    assert counts[ERRORS] == counts[FAILED] == 3 and counts[RETRIED] == 2
    assert counts[DEAD_LETTERED] == 1 and counts[TOTAL_REQUESTS] == 1
    assert counts[error_counter("StorageError")] == 3 and COMPLETED not in counts
    # the dead letter carries a replayable copy of the job (attempt 1)
    raw = await redis_client.xrange(KEYS.dlq)
    fields = msgpack.unpackb(raw[0][1][b"fields"], raw=False)
    assert fields["job_id"] == job_id.encode() and fields["attempt"] == b"1"


async def test_permanent_error_is_dead_lettered_at_once(redis_url: str, redis_client) -> None:
    settings = fast_settings(redis_url)
    async with consumers(settings, [BrokenHandler(settings)]), Producer(settings=settings) as p:
        job_id = await p.submit("m1", "embed", ["x"])
        await wait_until(lambda: _xlen(redis_client, KEYS.dlq, 1), 10, "a dead letter")
    (letter,) = await dead_letters(redis_client)
    assert letter["job_id"] == job_id and letter["reason"] == "permanent"
    assert letter["error_type"] == "ValueError" and letter["attempts"] == "1"
    counts = await read_stats(redis_client)
    assert counts[error_counter("ValueError")] == 1 and RETRIED not in counts


class _HangingHandler:
    """Never returns for inputs containing ``hang``: a stuck model must not hold its jobs
    forever. Counts the batches it was cancelled in."""

    def __init__(self) -> None:
        self.cancelled = 0

    async def run_batch(self, model: str, task: str, jobs: list[Job]) -> list[Any]:
        if any("hang" in str(job.inputs) for job in jobs):
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return [{"ok": job.job_id} for job in jobs]


async def test_a_batch_past_its_timeout_is_retried_then_dead_lettered(
    redis_url: str, redis_client
) -> None:
    settings = fast_settings(
        redis_url, batch_timeout_s=0.3, retry_attempts=2, retry_initial_delay_s=0.1
    )
    handler = _HangingHandler()
    async with consumers(settings, [handler]), Producer(settings=settings) as p:
        stuck = await p.submit("m1", "embed", ["hang"])
        with pytest.raises(BatchTimeoutError, match=r"SW_BATCH_TIMEOUT_S=0\.3 s") as err:
            await p.result(stuck, timeout_s=15)
        assert not isinstance(err.value, JobTimeoutError)  # failed, not "still running"
        # the worker goes on serving
        fine = await p.submit("m1", "embed", ["fine"])
        assert await p.result(fine, timeout_s=10) == {"ok": fine}
    assert handler.cancelled == 2  # each attempt's batch was cancelled, none left running
    (letter,) = await dead_letters(redis_client)
    assert letter["job_id"] == stuck and letter["error_type"] == "BatchTimeoutError"
    assert letter["attempts"] == "2"
    counts = await read_stats(redis_client)
    assert counts[error_counter("BatchTimeoutError")] == 2 and counts[RETRIED] == 1
    assert await pending_count(redis_client) == 0


class _OddHandler:
    """Returns what a handler must not: unpackable results, or the wrong count."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    async def run_batch(self, model: str, task: str, jobs: list[Job]) -> list[Any]:
        if self.mode == "unpackable":
            return [object() for _ in jobs]
        return []


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("unpackable", "cannot be stored"), ("short", "returned 0 results for 1 jobs")],
)
async def test_handler_misbehaviour_dead_letters_the_job(
    redis_url: str, redis_client, mode: str, reason: str
) -> None:
    settings = fast_settings(redis_url)
    async with consumers(settings, [_OddHandler(mode)]), Producer(settings=settings) as p:
        job_id = await p.submit("m1", "embed", ["x"])
        with pytest.raises(JobError, match=reason):
            await p.result(job_id, timeout_s=10)


async def test_poison_entry_is_dead_lettered(redis_url: str, redis_client) -> None:
    settings = fast_settings(redis_url, max_deliveries=3, claim_idle_ms=200)
    async with Producer(settings=settings) as p:
        job_id = await p.submit("m1", "embed", ["crashes every worker"])
        await redis_client.xgroup_create(KEYS.jobs, KEYS.jobs_group, id="0", mkstream=True)
        ((_, [(entry_id, _)]),) = await redis_client.xreadgroup(
            KEYS.jobs_group, "ghost", {KEYS.jobs: ">"}, count=1
        )
        # as if 5 workers had died holding it
        await redis_client.xclaim(
            KEYS.jobs, KEYS.jobs_group, "ghost", 0, [entry_id], idle=60_000, retrycount=5
        )
        async with consumers(settings, [FlakyHandler(settings)]):
            with pytest.raises(JobError, match="delivered 6 times, more than max_deliveries=3"):
                await p.result(job_id, timeout_s=10)
    (letter,) = await dead_letters(redis_client)
    assert letter["reason"] == "poison" and letter["job_id"] == job_id
    assert await recorded_events(redis_client, settings) == []  # never run again
    assert await pending_count(redis_client) == 0


async def test_retry_scheduled_by_a_dead_worker_is_moved_by_another(
    redis_url: str, redis_client
) -> None:
    settings = fast_settings(redis_url, retry_initial_delay_s=0.3, retry_jitter=0)
    async with Producer(settings=settings) as p:
        job_id = await p.submit("m1", "embed", ["fail=1"])
        async with consumers(settings, [FlakyHandler(settings)]):
            await wait_until(
                lambda: _status_is(p, job_id, "retrying"), timeout_s=10, what="a retry"
            )
        # the worker that scheduled the retry is gone; the retry waits in the zset
        assert await redis_client.zcard(KEYS.retries) == 1
        async with consumers(settings, [EchoHandler(settings)], names=["other"]):
            result = await p.result(job_id, timeout_s=10)
    assert result["attempt"] == 2 and (await p.status(job_id))["worker"] == "other"
    assert not await redis_client.exists(KEYS.retry_job(job_id))


async def _status_is(p: Producer, job_id: str, status: str) -> bool:
    return (await p.status(job_id))["status"] == status


async def test_error_messages_are_stored_with_type(redis_url: str, redis_client) -> None:
    settings = fast_settings(redis_url, retry_initial_delay_s=5)
    async with consumers(settings, [FlakyHandler(settings)]), Producer(settings=settings) as p:
        job_id = await p.submit("m1", "embed", ["fail=1"])
        await wait_until(lambda: _status_is(p, job_id, "retrying"), 10, "a retry")
        status = await p.status(job_id)
    assert status["error_type"] == "WeightServerError"
    assert "simulated blip 1" in status["error"]
    assert status["next_attempt_ms"] > status["updated_ms"]
    payload = json.dumps(status)  # status is plain JSON-able data
    assert job_id in payload
    await asyncio.sleep(0)

"""Scenario 7: hostile stream entries, fuzzed with hypothesis.

First the decoding layer alone (fast, many cases): :func:`decode_entry` must return a valid
:class:`Job` or raise :class:`JobError` -- nothing else, whatever the entry. Then a running
worker process: raw entries are ``XADD``-ed straight to ``sw:jobs``; every one must end as
a result or a dead letter with a reason, the worker must stay up, and its resident memory
must stay bounded (``/proc/<pid>/status``).
"""

from __future__ import annotations

import asyncio
import time

import msgpack
import pytest
import redis
from hypothesis import HealthCheck, given, seed
from hypothesis import settings as hsettings

from sw_core.counters import COMPLETED, DEAD_LETTERED
from sw_core.exceptions import JobError
from sw_core.local.redis_server import RedisServer
from sw_core.pipeline.jobs import Job, decode_entry
from sw_core.schema import MAX_INPUTS, TASKS
from sw_core.settings import Settings
from tests.chaos.hostile import entries, entry_size_bytes
from tests.chaos.report import Figures
from tests.support.observe import KEYS, read_stats
from tests.support.processes import Cluster, worker_env
from tests.support.settings import CHAOS, fast_settings
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.chaos]

_SETTINGS = Settings.from_env({})
_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]


def cases(long_mode: bool, short: int, long: int) -> int:
    return long if long_mode else short


def check_decoded(job: Job) -> None:
    """What every accepted job must satisfy."""
    assert job.task in TASKS
    assert isinstance(job.inputs, list) and 0 < len(job.inputs) <= MAX_INPUTS
    assert isinstance(job.params, dict)
    assert job.attempt >= 1
    msgpack.packb({"inputs": job.inputs, "params": job.params}, use_bin_type=True)


def test_decoding_layer_refuses_hostile_entries_with_job_errors_only(long_mode: bool) -> None:
    outcomes = {"job": 0, "job_error": 0}
    slowest = [0.0]

    @seed(20261128)
    @hsettings(
        max_examples=cases(long_mode, 400, 3000),
        deadline=None,
        database=None,
        suppress_health_check=_HEALTH,
    )
    @given(entry=entries())
    def run(entry: dict[bytes, bytes]) -> None:
        started = time.perf_counter()
        try:
            job = decode_entry("1700000000000-0", entry, _SETTINGS)
        except JobError as exc:
            assert str(exc), "a JobError without a reason"
            outcomes["job_error"] += 1
        else:
            check_decoded(job)
            outcomes["job"] += 1
        slowest[0] = max(slowest[0], time.perf_counter() - started)

    run()
    print("OUTCOMES", outcomes)
    assert outcomes["job"] > 0 and outcomes["job_error"] > 0, outcomes
    # a 3 MiB entry is refused by its size before any parsing
    assert slowest[0] < 2.0, slowest


def test_a_payload_with_both_text_and_binary_unknown_keys_is_a_job_error() -> None:
    """Minimal case hypothesis found: ``sorted()`` over str and bytes keys raised TypeError,
    which escapes the worker's ``except JobError`` (the entry is never dead-lettered)."""
    payload = msgpack.packb({b"x": 1, "y": 2, "inputs": ["a"]}, use_bin_type=True)
    entry = {b"model": b"m1", b"task": b"embed", b"payload": payload}
    with pytest.raises(JobError, match="unknown key"):
        decode_entry("1-1", entry, _SETTINGS)


def _xadd(url: str, batch: list[dict[bytes, bytes]]) -> list[str]:
    client = redis.Redis.from_url(url)
    try:
        return [client.xadd(KEYS.jobs, entry).decode() for entry in batch]
    finally:
        client.close()


async def test_hostile_entries_to_a_running_worker_all_end_and_it_stays_up(
    chaos_redis: RedisServer, chaos_client, cluster: Cluster, long_mode: bool, figures
) -> None:
    started = time.monotonic()
    settings = fast_settings(chaos_redis.url, CHAOS, models="m1=/srv/m1,m2=/srv/m2")
    worker = cluster.add(
        "fuzzed", worker_env(settings, SW_HANDLER="tests.support.handlers:SmallEcho")
    )
    await cluster.wait_registered(chaos_client, KEYS, 60)
    # warm up with valid jobs so the baseline RSS includes the steady-state allocations
    warm = [{b"model": b"m1", b"task": b"embed", b"text": f"warm {i}".encode()} for i in range(20)]
    await asyncio.to_thread(_xadd, chaos_redis.url, warm)
    await wait_until(lambda: _ended(chaos_client, 20), 60, "the warm-up jobs")
    rss_before_kib = worker.rss_kib()

    pushed: list[dict[bytes, bytes]] = []

    @seed(7)
    @hsettings(
        max_examples=cases(long_mode, 200, 1200),
        deadline=None,
        database=None,
        suppress_health_check=_HEALTH,
    )
    @given(entry=entries())
    def collect(entry: dict[bytes, bytes]) -> None:
        pushed.append(entry)

    collect()
    total_bytes = sum(entry_size_bytes(e) for e in pushed)
    for start in range(0, len(pushed), 50):
        await asyncio.to_thread(_xadd, chaos_redis.url, pushed[start : start + 50])
    expected = 20 + len(pushed)
    took = await wait_until(
        lambda: _ended(chaos_client, expected),
        120 if long_mode else 90,
        f"all {expected} entries to end as results or dead letters",
        0.2,
    )
    assert worker.alive, worker.log_text()[-3000:]
    # the worker still serves ordinary jobs afterwards
    await asyncio.to_thread(
        _xadd, chaos_redis.url, [{b"model": b"m1", b"task": b"embed", b"text": b"after"}]
    )
    await wait_until(lambda: _ended(chaos_client, expected + 1), 30, "a job after the fuzzing")
    rss_after_kib = worker.rss_kib()
    peak_kib = worker.peak_rss_kib()

    counts = await read_stats(chaos_client, KEYS)
    letters = await chaos_client.xrange(KEYS.dlq)
    assert len(letters) == counts.get(DEAD_LETTERED, 0)
    for _, letter in letters:
        assert letter[b"error_type"] and letter[b"error"] and letter[b"reason"], letter
    assert await chaos_client.xpending(KEYS.jobs, KEYS.jobs_group) == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }
    growth_mib = (rss_after_kib - rss_before_kib) / 1024
    assert growth_mib < 256, (rss_before_kib, rss_after_kib)
    reasons: dict[str, int] = {}
    for _, letter in letters:
        reason = letter[b"reason"].decode()
        reasons[reason] = reasons.get(reason, 0) + 1
    figures(
        Figures(
            scenario="7 hostile input fuzzing",
            produced=expected + 1,
            completed=counts.get(COMPLETED, 0),
            dead_lettered=counts.get(DEAD_LETTERED, 0),
            lost=expected + 1 - counts.get(COMPLETED, 0) - counts.get(DEAD_LETTERED, 0),
            recover_s=None,
            notes=(
                f"{len(pushed)} hypothesis entries ({total_bytes / 2**20:.1f} MiB) ended in "
                f"{took:.1f} s; worker up; RSS {rss_before_kib // 1024} -> "
                f"{rss_after_kib // 1024} MiB"
            ),
            duration_s=time.monotonic() - started,
            extra={
                "hostile entries": len(pushed),
                "dead-letter reasons": reasons,
                "rss before (MiB)": round(rss_before_kib / 1024, 1),
                "rss after (MiB)": round(rss_after_kib / 1024, 1),
                "rss peak (MiB)": round(peak_kib / 1024, 1),
            },
        )
    )


async def _ended(client, expected: int) -> bool:
    counts = await read_stats(client, KEYS)
    return counts.get(COMPLETED, 0) + counts.get(DEAD_LETTERED, 0) >= expected


async def test_an_entry_the_decoder_chokes_on_is_dead_lettered_not_retried_forever(
    redis_url: str, redis_client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: any exception while decoding an entry (a decoder bug, as the
    TypeError hypothesis found) must dead-letter that entry as malformed. Catching only
    JobError leaves it pending forever: reclaimed, choked on again, never dead-lettered
    (``max_deliveries`` is checked only when a job starts), and the entries read with it
    in the same batch are never taken either."""
    import workers.jobs.consumer as consumer_module
    from tests.support.handlers import SmallEcho
    from workers.jobs.consumer import JobConsumer

    real_decode = consumer_module.decode_entry

    def buggy_decode(entry_id: str, fields, settings):  # type: ignore[no-untyped-def]
        if fields.get("text") == b"boom":
            raise RuntimeError("a bug in the decoder")
        return real_decode(entry_id, fields, settings)

    monkeypatch.setattr(consumer_module, "decode_entry", buggy_decode)
    settings = fast_settings(redis_url, CHAOS, models="m1=/srv/m1", claim_idle_ms=300)
    await asyncio.to_thread(
        _xadd,
        redis_url,
        [{b"model": b"m1", b"task": b"embed", b"text": t} for t in (b"ok 1", b"boom", b"ok 2")],
    )
    consumer = JobConsumer(redis_client, settings, SmallEcho(settings), name="w-decode")
    await consumer.start()
    try:
        await wait_until(lambda: _ended(redis_client, 3), 10, "3 entries to end")
    finally:
        await consumer.stop(grace_s=2)
    letters = await redis_client.xrange(KEYS.dlq)
    assert [f[b"reason"] for _, f in letters] == [b"malformed"]

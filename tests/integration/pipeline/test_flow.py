"""Producer -> stream -> worker -> result, against the real Redis fixture."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from producer import Producer
from sw_core.counters import COMPLETED, ERRORS, TOTAL_REQUESTS
from sw_core.exceptions import JobTimeoutError, ModelError, SurfingError
from tests.support.handlers import BrokenHandler, EchoHandler, RecordingEchoHandler
from tests.support.observe import KEYS, pending_count, read_stats, recorded_events
from tests.support.pipeline import consumers
from tests.support.settings import fast_settings
from tests.support.waiting import wait_until
from workers.heartbeat import Heartbeat


async def test_submit_then_result_round_trip(redis_url: str, redis_client) -> None:
    settings = fast_settings(redis_url)
    async with consumers(settings, [EchoHandler(settings)]), Producer(settings=settings) as p:
        job_id = await p.submit("m1", "generate", ["hello"], max_new_tokens=5)
        result = await p.result(job_id, timeout_s=10)
        status = await p.status(job_id)
    assert result == {
        "job_id": job_id,
        "inputs": ["hello"],
        "params": {"max_new_tokens": 5},
        "attempt": 1,
    }
    assert status["status"] == "done" and status["attempts"] == 1 and status["worker"] == "w0"
    assert status["finished_ms"] >= status["started_ms"] >= status["submitted_ms"]
    assert 0 < await redis_client.ttl(KEYS.job(job_id)) <= settings.result_ttl_s
    counts = await read_stats(redis_client)
    assert counts[TOTAL_REQUESTS] == 1 and counts[COMPLETED] == 1 and ERRORS not in counts
    assert await redis_client.xlen(KEYS.jobs) == 0  # acked entries are deleted
    assert await pending_count(redis_client) == 0


async def test_hand_added_entry_is_run_and_counted_once(redis_url: str, redis_client) -> None:
    settings = fast_settings(redis_url)
    async with consumers(settings, [EchoHandler(settings)]), Producer(settings=settings) as p:
        entry_id = await redis_client.xadd(
            KEYS.jobs, {"model": "m1", "task": "embed", "text": "hello world", "normalize": "true"}
        )
        job_id = entry_id.decode()
        result = await p.result(job_id, timeout_s=10)
    assert result["job_id"] == job_id
    assert result["inputs"] == ["hello world"] and result["params"] == {"normalize": True}
    counts = await read_stats(redis_client)
    assert counts[TOTAL_REQUESTS] == 1 and counts[COMPLETED] == 1


async def test_two_producers_two_workers_every_result_once(redis_url: str, redis_client) -> None:
    settings = fast_settings(redis_url, max_batch_size=8)
    per_producer = 150
    handlers = [RecordingEchoHandler(settings), RecordingEchoHandler(settings)]
    async with consumers(settings, handlers) as workers:
        async with Producer(settings=settings) as p1, Producer(settings=settings) as p2:

            async def produce(p: Producer, tag: str) -> list[tuple[str, str]]:
                out = []
                for i in range(per_producer):
                    text = f"{tag}-{i}"
                    out.append((await p.submit("m1", "embed", [text]), text))
                return out

            sent_a, sent_b = await asyncio.gather(produce(p1, "a"), produce(p2, "b"))
            sent = sent_a + sent_b
            results = await asyncio.gather(*(p1.result(j, timeout_s=30) for j, _ in sent))
        assert [r["inputs"] for r in results] == [[text] for _, text in sent]
        assert all(w.jobs_done > 0 for w in workers), [w.jobs_done for w in workers]
        assert sum(w.jobs_done for w in workers) == 2 * per_producer
    runs = Counter(c["job_id"] for c in await recorded_events(redis_client, settings))
    assert set(runs) == {j for j, _ in sent} and set(runs.values()) == {1}
    counts = await read_stats(redis_client)
    assert counts[TOTAL_REQUESTS] == counts[COMPLETED] == 2 * per_producer
    assert ERRORS not in counts
    assert await pending_count(redis_client) == 0


async def test_jobs_are_batched_per_model_and_task(redis_url: str, redis_client) -> None:
    settings = fast_settings(redis_url, max_batch_size=8, batch_wait_ms=20)
    async with Producer(settings=settings) as p:
        ids = []
        for i in range(24):  # queued before any worker runs: batches can fill
            model, task = ("m1", "embed") if i % 3 else ("m2", "generate")
            ids.append(await p.submit(model, task, [f"t{i}"]))
        async with consumers(settings, [RecordingEchoHandler(settings)]):
            await asyncio.gather(*(p.result(j, timeout_s=20) for j in ids))
    records = await recorded_events(redis_client, settings)
    assert len(records) == 24
    batches: Counter[tuple[str, str, int, float]] = Counter(
        (c["model"], c["task"], c["batch"], c["t"]) for c in records
    )
    for (model, task, size, _), seen in batches.items():
        assert size == seen <= 8  # one batch = one (model, task), at most max_batch_size
        assert (model, task) in {("m1", "embed"), ("m2", "generate")}
    assert max(size for _, _, size, _ in batches) == 8
    assert len(batches) <= 5  # 16 m1 jobs in 2 batches, 8 m2 jobs in 1 (+ slack for timing)


async def test_result_raises_the_stored_error_class(redis_url: str, redis_client) -> None:
    settings = fast_settings(redis_url)
    async with consumers(settings, [BrokenHandler(settings)]), Producer(settings=settings) as p:
        broken = await p.submit("m1", "embed", ["x"])
        entry = {"model": "nosuchmodel", "task": "embed", "text": "x"}  # submit refuses it
        unknown = (await redis_client.xadd(KEYS.jobs, entry)).decode()
        with pytest.raises(SurfingError, match="ValueError: handler bug"):
            await p.result(broken, timeout_s=10)
        with pytest.raises(ModelError, match="sw register nosuchmodel"):
            await p.result(unknown, timeout_s=10)
        assert (await p.status(unknown))["status"] == "dead"


async def test_result_times_out_with_job_timeout_error(redis_url: str) -> None:
    settings = fast_settings(redis_url)
    async with Producer(settings=settings) as p:
        job_id = await p.submit("m1", "embed", ["nobody runs this"])
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(JobTimeoutError, match="status: queued"):
            await p.result(job_id, timeout_s=0.3)
        assert 0.25 < loop.time() - started < 2
        assert (await p.status(job_id))["status"] == "queued"
        assert (await p.status("no-such-job"))["status"] == "unknown"


async def test_many_waiters_on_one_job_all_wake(redis_url: str) -> None:
    settings = fast_settings(redis_url)
    async with Producer(settings=settings) as p:
        job_id = await p.submit("m1", "embed", ["shared"])
        waiters = [asyncio.create_task(p.result(job_id, timeout_s=10)) for _ in range(5)]
        await asyncio.sleep(0.2)  # all of them blocked on the done list
        async with consumers(settings, [EchoHandler(settings)]):
            results = await asyncio.gather(*waiters)
    assert all(r["inputs"] == ["shared"] for r in results)


async def test_heartbeat_hash_expires_and_is_removed_at_stop(redis_url: str, redis_client) -> None:
    settings = fast_settings(redis_url, heartbeat_interval_s=0.1, heartbeat_ttl_s=3)
    beat = Heartbeat(
        redis_client, settings, worker_id="hb-1", kind="loader", report=lambda: {"jobs_done": 7}
    )
    await beat.start()
    first = await redis_client.zscore(KEYS.workers, "hb-1")
    await asyncio.sleep(0.35)
    info = await redis_client.hgetall(KEYS.worker("hb-1"))
    assert info[b"kind"] == b"loader" and info[b"jobs_done"] == b"7" and int(info[b"pid"]) > 0
    assert 0 < await redis_client.ttl(KEYS.worker("hb-1")) <= 3
    assert await redis_client.zscore(KEYS.workers, "hb-1") > first  # beats keep coming
    await beat.stop()
    assert not await redis_client.exists(KEYS.worker("hb-1"))
    assert await redis_client.zscore(KEYS.workers, "hb-1") is None


async def test_consumer_reports_current_work_in_its_heartbeat(redis_url: str, redis_client) -> None:
    settings = fast_settings(redis_url)
    async with consumers(settings, [EchoHandler(settings)]) as (worker,):
        async with Producer(settings=settings) as p:
            await p.result(await p.submit("m1", "embed", ["x"]), timeout=10)
        report = worker.report()
    assert report["jobs_done"] == 1 and report["current_jobs"] == ""


async def test_worker_waits_for_a_job_without_busy_polling(redis_url: str, redis_client) -> None:
    settings = fast_settings(redis_url, poll_block_ms=200)
    async with consumers(settings, [EchoHandler(settings)]), Producer(settings=settings) as p:
        await asyncio.sleep(0.5)
        before = (await redis_client.info("commandstats")).get("cmdstat_xreadgroup", {})
        await asyncio.sleep(1.0)
        after = (await redis_client.info("commandstats")).get("cmdstat_xreadgroup", {})
        reads = after.get("calls", 0) - before.get("calls", 0)
        assert reads <= 8, reads  # blocking reads of 200 ms: about 5 a second
        job_id = await p.submit("m1", "embed", ["late"])
        took = await wait_until(
            lambda: _done(p, job_id), timeout_s=5, what="the late job", every_s=0.01
        )
        assert took < 0.5  # a blocked read returns as soon as the entry lands


async def _done(p: Producer, job_id: str) -> bool:
    return (await p.status(job_id))["status"] == "done"

"""Acceptance: injected storage failures and bad inputs show up exactly, everywhere.

One real inference worker process (``arq workers.Settings``) runs against the real Redis.
Its handler (``tests.support.handlers.ChunkReadingHandler``) reads every chunk of the job's model
through the worker's own chunk path (shared cache, loader, storage). The model ``down`` lives
on an S3 endpoint nobody listens on, so each of its job attempts fails with a real
``StorageError`` from the S3 backend; malformed entries added straight to the stream fail
with ``JobError`` in the consumer. The same numbers must appear in ``sw:stats``, in
``StreamingMonitor.get_stats()`` and on ``/metrics``.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from producer import Producer
from sw_core.chunks.manifest import Manifest
from sw_core.keys import Keys
from sw_core.local.redis_server import RedisServer, free_port
from sw_core.ops.monitor import StreamingMonitor
from sw_core.ops.prometheus import start_metrics_server
from sw_core.settings import Settings
from tests.support.processes import worker_logs, workers
from tests.support.settings import OPS, fast_settings
from tests.support.storage import make_chunk_set
from tests.support.waiting import wait_until_sync

KEYS = Keys("sw")
GOOD_JOBS = 3
DOWN_JOBS = 2
ATTEMPTS = 2
#: Storage failures injected: every attempt of every job of the ``down`` model.
STORAGE_FAILURES = DOWN_JOBS * ATTEMPTS
#: Malformed stream entries (no inputs, inputs not JSON, an empty text, unknown task).
BAD_ENTRIES: list[dict[str, str]] = [
    {"model": "good", "task": "embed"},
    {"model": "good", "task": "embed", "inputs": "not json"},
    {"model": "good", "task": "embed", "text": ""},
    {"model": "good", "task": "translate", "text": "hello"},
]
BAD_INPUTS = len(BAD_ENTRIES)


@dataclass
class Scenario:
    settings: Settings
    manifest: Manifest
    metrics_port: int
    logs: Path


@pytest.fixture(scope="module")
def scenario(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scenario]:
    """Run the jobs once for the whole module; the worker keeps running during its tests."""
    tmp = tmp_path_factory.mktemp("ops-counters")
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    manifest = make_chunk_set(tmp / "good", name="good")
    metrics_port = free_port()
    settings = fast_settings(
        redis_server.url,
        OPS,
        s3_endpoint=f"127.0.0.1:{free_port()}",  # nothing listens: a storage outage
        s3_access_key="testing",
        s3_secret_key="testing",
        retry_attempts=ATTEMPTS,
        metrics_port=metrics_port,
    )
    client.hset(KEYS.models, mapping={"good": str(tmp / "good"), "down": "s3://sw-down/down"})

    async def submit() -> list[str]:
        async with Producer(settings=settings) as producer:
            ids = [
                await producer.submit(model="good", task="embed", inputs=[f"sentence {i}"])
                for i in range(GOOD_JOBS)
            ]
            ids += [
                await producer.submit(model="down", task="embed", inputs=[f"lost {i}"])
                for i in range(DOWN_JOBS)
            ]
            return ids

    with workers(settings, tmp, "inference"):
        asyncio.run(submit())
        for entry in BAD_ENTRIES:
            client.xadd(KEYS.jobs, entry)

        def finished() -> bool:
            stats = client.hgetall(KEYS.stats)
            done = int(stats.get(b"completed", 0))
            dead = int(stats.get(b"dead_lettered", 0))
            # the loader's storage counters reach Redis with the next heartbeat
            return (
                done == GOOD_JOBS
                and dead == DOWN_JOBS + BAD_INPUTS
                and b"storage_bytes_read" in stats
            )

        try:
            wait_until_sync(finished, 90, "all jobs to finish")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\n{client.hgetall(KEYS.stats)}\n{worker_logs(tmp)}"
            ) from None
        yield Scenario(settings, manifest, metrics_port, tmp)
    client.close()


def expected_counters() -> dict[str, int]:
    failures = STORAGE_FAILURES + BAD_INPUTS
    return {
        "total_requests": GOOD_JOBS + DOWN_JOBS + BAD_INPUTS,
        "completed": GOOD_JOBS,
        "failed": failures,
        "retried": DOWN_JOBS * (ATTEMPTS - 1),
        "dead_lettered": DOWN_JOBS + BAD_INPUTS,
        "errors": failures,
        "errors:StorageError": STORAGE_FAILURES,
        "errors:JobError": BAD_INPUTS,
    }


def test_stats_hash_holds_exactly_the_injected_failures(scenario: Scenario) -> None:
    client = redis.Redis.from_url(scenario.settings.redis_url, decode_responses=True)
    stats = {k: int(v) for k, v in client.hgetall(KEYS.stats).items()}
    client.close()
    for name, value in expected_counters().items():
        assert stats.get(name) == value, (name, stats)
    assert {k for k in stats if k.startswith("errors:")} == {
        "errors:StorageError",
        "errors:JobError",
    }
    chunk_bytes = sum(c.size_bytes for c in scenario.manifest.chunks)
    assert stats["storage_bytes_read"] >= chunk_bytes


async def test_monitor_reports_the_same_numbers(scenario: Scenario) -> None:
    async with StreamingMonitor(settings=scenario.settings) as monitor:
        stats = await monitor.get_stats()
    expected = expected_counters()
    for name in ("total_requests", "completed", "failed", "retried", "dead_lettered", "errors"):
        assert stats[name] == expected[name], name
    assert stats["errors_by_type"] == {"StorageError": STORAGE_FAILURES, "JobError": BAD_INPUTS}
    # the guide's example works as written
    assert stats["errors"] / stats["total_requests"] == pytest.approx(stats["error_rate"])
    assert stats["error_rate"] == pytest.approx(expected["errors"] / expected["total_requests"])
    assert stats["alert"] is True and "SW_ALERT_ERROR_RATE" in stats["alert_reason"]
    assert stats["dead_letters"] == DOWN_JOBS + BAD_INPUTS
    assert stats["queue_length"] == 0 and stats["pending"] == 0 and stats["scheduled_retries"] == 0
    assert stats["workers_by_kind"].get("inference") == 1
    assert stats["cache_hits"] + stats["cache_misses"] > 0
    assert stats["storage_bytes_read"] >= sum(c.size_bytes for c in scenario.manifest.chunks)


def test_metrics_endpoint_reports_the_same_numbers(scenario: Scenario) -> None:
    server = start_metrics_server(0, scenario.settings, host="127.0.0.1")
    try:
        body = urllib.request.urlopen(server.url, timeout=10).read().decode()
    finally:
        server.stop()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }
    expected = expected_counters()
    assert samples[("sw_up", ())] == 1
    assert samples[("sw_requests_total", ())] == expected["total_requests"]
    for status in ("completed", "failed", "retried", "dead_lettered"):
        assert samples[("sw_jobs_total", (("status", status),))] == expected[status], status
    assert samples[("sw_errors_total", (("type", "StorageError"),))] == STORAGE_FAILURES
    assert samples[("sw_errors_total", (("type", "JobError"),))] == BAD_INPUTS
    assert samples[("sw_dead_letters", ())] == DOWN_JOBS + BAD_INPUTS
    assert samples[("sw_workers", (("kind", "inference"),))] == 1
    assert samples[("sw_storage_bytes_read_total", ())] >= sum(
        c.size_bytes for c in scenario.manifest.chunks
    )


async def test_workers_record_job_latency(scenario: Scenario) -> None:
    async with StreamingMonitor(settings=scenario.settings) as monitor:
        stats = await monitor.get_stats()
    embed = stats["latency"]["embed"]
    assert embed["count"] == GOOD_JOBS
    assert 0 < embed["p50"] <= embed["p95"] <= embed["p99"] <= embed["max_s"]


def test_worker_serves_metrics_on_its_port(scenario: Scenario) -> None:
    url = f"http://127.0.0.1:{scenario.metrics_port}/metrics"
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    names = {f.name for f in text_string_to_metric_families(body)}
    assert {"sw_jobs", "sw_errors", "sw_job_latency_seconds"} <= names

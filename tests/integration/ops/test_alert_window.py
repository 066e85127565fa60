"""The alert judges a recent window; lifetime counters stay for Prometheus;
job metrics carry a model label; /metrics has the standard process metrics."""

from __future__ import annotations

import time

import redis
from prometheus_client import generate_latest

from producer import Producer
from sw_core.ops.monitor import StreamingMonitor
from sw_core.ops.prometheus import metrics_registry
from tests.support.handlers import BrokenHandler, EchoHandler
from tests.support.observe import KEYS
from tests.support.pipeline import consumers
from tests.support.settings import fast_settings
from tests.support.waiting import wait_until


def _monitor_stats(settings) -> dict:
    with StreamingMonitor(settings=settings) as monitor:
        return monitor.get_stats_sync()


def test_old_incident_does_not_alert_and_a_recent_one_does(redis_url: str) -> None:
    settings = fast_settings(redis_url, alert_error_rate=0.1, alert_window_s=300)
    client = redis.Redis.from_url(redis_url)
    now_bucket = int(time.time()) // 10
    # an incident an hour ago: every request failed; the last five minutes were clean
    client.hset(KEYS.stats, mapping={"total_requests": 1100, "errors": 1000, "completed": 100})
    client.hset(
        KEYS.stats_window(now_bucket - 360), mapping={"total_requests": 1000, "errors": 1000}
    )
    client.hset(KEYS.stats_window(now_bucket - 1), mapping={"total_requests": 100})
    stats = _monitor_stats(settings)
    assert stats["error_rate"] > 0.9  # lifetime, kept
    assert stats["recent_requests"] == 100 and stats["recent_errors"] == 0
    assert stats["alert"] is False
    # a bad recent minute on a cluster with a long good history
    client.hset(KEYS.stats, mapping={"total_requests": 1_000_000, "errors": 30})
    client.hset(KEYS.stats_window(now_bucket), mapping={"total_requests": 20, "errors": 30})
    stats = _monitor_stats(settings)
    assert stats["error_rate"] < 0.001
    assert stats["alert"] is True and "over 300 s" in stats["alert_reason"]
    client.close()


async def test_pipeline_counts_recent_window_and_models(redis_url: str) -> None:
    settings = fast_settings(redis_url, alert_error_rate=0.4)
    async with consumers(settings, [EchoHandler(settings)]), Producer(settings=settings) as p:
        for job_id in [await p.submit("m1", "embed", ["a"]) for _ in range(3)]:
            await p.result(job_id, timeout_s=10)
    async with consumers(settings, [BrokenHandler(settings)]), Producer(settings=settings) as p:
        job_id = await p.submit("m2", "embed", ["b"])
        await wait_until(lambda: _status(p, job_id, "dead"), 10, "the broken job dead")
    stats = _monitor_stats(settings)
    assert (stats["recent_requests"], stats["recent_errors"]) == (4, 1)
    assert stats["alert"] is False  # 25 % < 40 %
    assert stats["jobs_by_model"] == {
        "m1": {"completed": 3},
        "m2": {"failed": 1, "dead_lettered": 1},
    }
    text = generate_latest(metrics_registry(settings)).decode()
    assert 'sw_model_jobs_total{model="m1",status="completed"} 3.0' in text
    assert 'sw_model_jobs_total{model="m2",status="dead_lettered"} 1.0' in text
    assert "sw_error_rate 0.25" in text
    assert "process_resident_memory_bytes" in text and "python_info" in text


async def _status(p: Producer, job_id: str, status: str) -> bool:
    return (await p.status(job_id))["status"] == status

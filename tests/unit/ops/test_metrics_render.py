"""Pure parts of the ops tools: snapshot building, dashboard layout, metric families."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from sw_core.exceptions import JobError
from sw_core.ops.dashboard import render_dashboard
from sw_core.ops.health import _memory_check
from sw_core.ops.metrics import Histogram
from sw_core.ops.monitor import StreamingMonitor
from sw_core.ops.prometheus import ClusterCollector, build_metrics
from sw_core.pipeline.dlq import _check_id
from sw_core.settings import Settings

SETTINGS = Settings.from_env({}, alert_error_rate=0.25, heartbeat_ttl_s=10)


def first_round(**overrides: object) -> dict[str, object]:
    now_ms = time.time() * 1000
    replies: dict[str, object] = {
        "stats": {
            b"total_requests": b"20",
            b"completed": b"14",
            b"errors": b"6",
            b"errors:StorageError": b"4",
            b"errors:JobError": b"2",
            b"cache_hits": b"3",
        },
        "cache_meta": {b"bytes": b"1048576", b"hits": b"9", b"misses": b"1"},
        "cache_chunks": 2,
        "xlen": 7,
        "groups": [
            {
                "name": b"sw-workers",
                "consumers": 2,
                "pending": 3,
                "last-delivered-id": b"5-0",
                "lag": 4,
            }
        ],
        "retries": 1,
        "dlq": 2,
        "workers": [b"w1", str(now_ms - 500).encode(), b"w2", str(now_ms - 900).encode()],
        "latency_tasks": {b"embed"},
        "window": [20, 6],  # the recent counts the alert judges
    }
    replies.update(overrides)
    if "stats" in overrides and "window" not in overrides:  # recent counts = these counters
        counts = {k: int(v) for k, v in overrides["stats"].items()}  # type: ignore[attr-defined]
        replies["window"] = [counts.get(b"total_requests", 0), counts.get(b"errors", 0)]
    return replies


def second_round() -> dict[str, object]:
    now_ms = int(time.time() * 1000)
    return {
        "worker:w1": {
            b"kind": b"inference",
            b"beat_ms": str(now_ms - 500).encode(),
            b"current_jobs": b"job-1",
            b"current_model": b"minilm",
            b"jobs_done": b"7",
        },
        "worker:w2": {},  # expired hash: not live any more
        "latency:embed": {
            b"bucket:0.05": b"3",
            b"count": b"3",
            b"sum_us": b"120000",
            b"max_us": b"45000",
        },
    }


def test_snapshot_numbers() -> None:
    monitor = StreamingMonitor("redis://unused", SETTINGS)
    stats, histograms = monitor._build(first_round(), second_round(), time.time())
    assert stats["error_rate"] == pytest.approx(0.3)
    assert stats["alert"] is True and "30.0%" in stats["alert_reason"]
    assert stats["errors_by_type"] == {"JobError": 2, "StorageError": 4}
    assert (stats["queue_length"], stats["pending"], stats["consumers"]) == (4, 3, 2)
    assert (stats["scheduled_retries"], stats["dead_letters"]) == (1, 2)
    # the cache's own meta hash counts every client: the larger count wins
    assert (stats["cache_hits"], stats["cache_misses"]) == (9, 1)
    assert stats["cache_hit_rate"] == pytest.approx(0.9)
    assert [w["id"] for w in stats["workers"]] == ["w1"]
    assert stats["workers"][0]["current"] == "job-1"
    assert stats["workers_by_kind"] == {"inference": 1}
    assert stats["latency"]["embed"]["count"] == 3
    assert histograms["embed"].max_s == pytest.approx(0.045)
    assert stats["throughput_jobs_s"] is None


def test_queue_without_lag_uses_the_server_side_count_and_no_group_means_all_wait() -> None:
    monitor = StreamingMonitor("redis://unused", SETTINGS)
    groups = [{"name": b"sw-workers", "consumers": 1, "pending": 0, "last-delivered-id": b"1-0"}]
    first = first_round(groups=groups)
    assert "undelivered" in monitor._second_round(first)
    stats, _ = monitor._build(first, {"undelivered": 5}, time.time())
    assert stats["queue_length"] == 5
    stats, _ = monitor._build(first_round(groups=Exception("no such key")), {}, time.time())
    assert (stats["queue_length"], stats["pending"]) == (7, 0)


def test_throughput_comes_from_completed_deltas() -> None:
    monitor = StreamingMonitor("redis://unused", SETTINGS)
    now = time.time()
    monitor._build(first_round(), {}, now)
    later = first_round(stats={b"total_requests": b"30", b"completed": b"24"})
    stats, _ = monitor._build(later, {}, now + 2.0)
    assert stats["throughput_jobs_s"] == pytest.approx(5.0)
    assert stats["alert"] is False and stats["error_rate"] == 0.0


def test_no_requests_no_alert() -> None:
    monitor = StreamingMonitor("redis://unused", SETTINGS)
    stats, _ = monitor._build(first_round(stats={}), {}, time.time())
    assert stats["error_rate"] == 0.0 and stats["alert"] is False and stats["alert_reason"] is None


@pytest.mark.parametrize("workers", [0, 1, 40])
def test_dashboard_fits_100_by_30(workers: int) -> None:
    monitor = StreamingMonitor("redis://unused", SETTINGS)
    stats, _ = monitor._build(first_round(), second_round(), time.time())
    stats["workers"] = [
        {"id": f"host-{i}", "kind": "loader", "current": "", "age_s": 0.5, "chunks_loaded": i}
        for i in range(workers)
    ]
    stats["errors_by_type"] = {f"Error{i}": i + 1 for i in range(7)}
    console = Console(width=100, height=30, record=True, force_terminal=False)
    console.print(render_dashboard(stats, source="redis://host:6379/0", interval_s=1, height=30))
    lines = console.export_text().rstrip("\n").splitlines()
    assert len(lines) <= 30
    assert max(len(line) for line in lines) <= 100
    assert lines[-1].startswith("╰")
    text = "\n".join(lines)
    assert "ALERT" in text and "Error6" in text and "4 more types" in text
    if workers > 8:
        assert "more" in lines[-2]  # the rest of the workers are summarized
    if workers == 0:
        assert "no worker heartbeating" in text


def test_metric_families_round_trip_through_the_text_format() -> None:
    stats = {
        "total_requests": 20,
        "completed": 14,
        "failed": 6,
        "retried": 4,
        "dead_lettered": 2,
        "errors_by_type": {"StorageError": 4},
        "queue_length": 3,
        "pending": 1,
        "workers_by_kind": {"inference": 2, "loader": 1},
        "alert": True,
    }
    hist = Histogram.from_observations([0.01, 0.2, 3.0])
    registry = CollectorRegistry(auto_describe=False)

    class Fixed:
        def collect(self):
            return build_metrics(stats, {"embed": hist})

    registry.register(Fixed())
    text = generate_latest(registry).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert samples[("sw_jobs_total", (("status", "failed"),))] == 6
    assert samples[("sw_errors_total", (("type", "StorageError"),))] == 4
    assert samples[("sw_workers", (("kind", "loader"),))] == 1
    assert samples[("sw_alert", ())] == 1
    assert samples[("sw_job_latency_seconds_count", (("task", "embed"),))] == 3
    assert samples[("sw_job_latency_seconds_bucket", (("le", "0.25"), ("task", "embed")))] == 2
    assert samples[("sw_job_latency_seconds_bucket", (("le", "+Inf"), ("task", "embed")))] == 3
    assert samples[("sw_job_latency_seconds_sum", (("task", "embed"),))] == pytest.approx(3.21)


def test_collector_reports_down_when_redis_does_not_answer() -> None:
    from sw_core.local.redis_server import free_port

    settings = SETTINGS.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0", timeout_seconds=2)
    families = list(ClusterCollector(StreamingMonitor(settings=settings)).collect())
    assert [(f.name, f.samples[0].value) for f in families] == [("sw_up", 0)]


class FakeConfig:
    def __init__(self, policy: str, maxmemory: int) -> None:
        self.reply = {"maxmemory-policy": policy, "maxmemory": str(maxmemory)}

    def config_get(self, pattern: str) -> dict[str, str]:
        return self.reply


@pytest.mark.parametrize(
    ("policy", "maxmemory_mb", "status"),
    [
        ("noeviction", 0, "ok"),
        ("volatile-lru", 0, "ok"),
        ("allkeys-lru", 0, "warn"),
        ("allkeys-random", 0, "warn"),
        ("noeviction", 1100, "warn"),  # cache budget 1024 MiB > 80 % of maxmemory
        ("noeviction", 4096, "ok"),
    ],
)
def test_memory_policy_check(policy: str, maxmemory_mb: int, status: str) -> None:
    check = _memory_check(FakeConfig(policy, maxmemory_mb << 20), SETTINGS)
    assert check.status == status, check.detail


def test_memory_check_leaves_out_a_cache_on_its_own_redis() -> None:
    own = Settings.from_env({}, cache_redis_url="redis://cache:6379/0")
    check = _memory_check(FakeConfig("noeviction", 512 << 20), own)  # cache budget 1024 MiB
    assert check.status == "ok", check.detail


def test_dead_letter_ids_are_checked() -> None:
    assert _check_id(" 1712345678901-0 ") == "1712345678901-0"
    assert _check_id("1712345678901") == "1712345678901"
    for bad in ("", "-", "abc", "1-x", "1-2-3", "1 2"):
        with pytest.raises(JobError):
            _check_id(bad)

"""``sw health`` and ``check_health``: real worker processes, real Redis, moto's S3."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import redis

from sw_core.local.redis_server import RedisServer
from sw_core.ops.health import check_health
from tests.support.cli import run_sw
from tests.support.processes import start_worker, worker_logs, workers
from tests.support.servers import S3Server
from tests.support.settings import OPS, fast_settings
from tests.support.waiting import wait_until_sync

TTL_S = 2.0


def by_name(report) -> dict[str, str]:
    return {check.name: check.status for check in report.checks}


def test_health_fails_within_the_ttl_after_the_only_inference_worker_dies(
    redis_url: str, tmp_path: Path
) -> None:
    settings = fast_settings(redis_url, OPS, heartbeat_ttl_s=TTL_S, heartbeat_interval_s=0.25)
    with workers(settings, tmp_path, "loader"):
        inference = start_worker(settings, tmp_path / "inference-a.log")
        try:
            wait_until_sync(lambda: check_health(settings).ok, 60, "both workers heartbeating")
            first = run_sw(["health"], settings)
            assert first.returncode == 0, first.stdout + first.stderr
            assert "inference workers" in first.stdout and "healthy" in first.stdout

            inference.send_signal(signal.SIGKILL)
            inference.wait(10)
            killed_at = time.monotonic()

            def inference_dead() -> bool:
                return by_name(check_health(settings))["inference workers"] == "fail"

            wait_until_sync(
                inference_dead, TTL_S + 10, "the dead worker to be noticed", every_s=0.05
            )
            detected_s = time.monotonic() - killed_at
            # the last beat was at most one interval before the kill: a worker counts as dead
            # once its last beat is older than the TTL (its hash expires then too)
            assert TTL_S - 0.5 <= detected_s <= TTL_S + 0.5, detected_s
            assert by_name(check_health(settings))["loader workers"] == "ok"
            failed = run_sw(["health"], settings)
            assert failed.returncode == 1 and "UNHEALTHY" in failed.stdout
        finally:
            inference.stop()

        replacement = start_worker(settings, tmp_path / "inference-b.log")
        try:
            try:
                wait_until_sync(
                    lambda: check_health(settings).ok, 60, "the new worker heartbeating"
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{worker_logs(tmp_path)}") from None
            again = run_sw(["health"], settings)
            assert again.returncode == 0, again.stdout + again.stderr
        finally:
            replacement.stop()


def test_health_checks_redis_policy_storage_and_folders(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    with RedisServer(maxmemory_policy="allkeys-lru", maxmemory_mb=64) as server:
        settings = fast_settings(
            server.url,
            OPS,
            s3_endpoint=s3_server.endpoint,
            s3_access_key=s3_server.access_key,
            s3_secret_key=s3_server.secret_key,
            s3_bucket=s3_bucket,
            backup_dir=tmp_path / "missing",
            cache_size_mb=16,
        )
        client = redis.Redis.from_url(server.url)
        client.hset("sw:models", "gone", "s3://no-such-bucket-here/gone")
        report = check_health(settings, require_kinds=())
        client.close()
    statuses = by_name(report)
    assert statuses["redis"] == "ok"
    assert statuses["redis memory"] == "warn"  # allkeys-lru may evict the queues
    assert statuses[f"s3 bucket {s3_bucket}"] == "ok"
    assert statuses["s3 bucket no-such-bucket-here"] == "fail"
    assert statuses["backup dir"] == "fail"
    assert not report.ok

    (tmp_path / "missing").mkdir()
    with RedisServer(maxmemory_policy="noeviction") as server:
        report = check_health(settings.replace(redis_url=server.url), require_kinds=())
    statuses = by_name(report)
    assert statuses["redis memory"] == "ok"
    assert statuses["backup dir"] == "ok"
    assert report.ok, report.checks


def test_health_reports_an_unreachable_redis_and_s3(tmp_path: Path) -> None:
    from sw_core.local.redis_server import free_port

    settings = fast_settings(
        f"redis://127.0.0.1:{free_port()}/0", OPS, s3_endpoint=f"127.0.0.1:{free_port()}"
    )
    started = time.monotonic()
    report = check_health(settings)
    assert time.monotonic() - started < 15
    statuses = by_name(report)
    assert statuses["redis"] == "fail"
    assert statuses["inference workers"] == "fail"
    assert statuses[f"s3 bucket {settings.s3_bucket}"] == "fail"
    result = run_sw(["health", "--json"], settings)
    assert result.returncode == 1
    assert '"ok": false' in result.stdout

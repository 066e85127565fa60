"""``sw stats``, ``sw monitor --once`` and ``sw metrics``: output and exit statuses."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from typing import Any

import redis
from prometheus_client.parser import text_string_to_metric_families

from sw_core.keys import Keys
from sw_core.local.redis_server import free_port
from tests.support.cli import run_sw_here, sw_command
from tests.support.processes import REPO, worker_env
from tests.support.settings import OPS, fast_settings
from tests.support.waiting import wait_until_sync

KEYS = Keys("sw")


def seed(redis_url: str, requests: int, errors: int) -> None:
    client = redis.Redis.from_url(redis_url)
    client.hset(
        KEYS.stats,
        mapping={
            "total_requests": requests,
            "completed": requests - errors,
            "errors": errors,
            "errors:StorageError": errors,
        },
    )
    # ... and as recent counts, which the alert judges
    client.hset(
        KEYS.stats_window(int(time.time()) // 10),
        mapping={"total_requests": requests, "errors": errors},
    )
    client.close()


def test_stats_json_and_check(redis_url: str, monkeypatch, capsys) -> None:
    settings = fast_settings(redis_url, OPS, alert_error_rate=0.2)
    seed(redis_url, requests=10, errors=1)
    rc, out, _ = run_sw_here(["stats", "--json", "--check"], settings, monkeypatch, capsys)
    stats = json.loads(out)
    assert rc == 0 and stats["errors"] == 1 and stats["alert"] is False

    seed(redis_url, requests=10, errors=3)
    rc, out, err = run_sw_here(["stats", "--check"], settings, monkeypatch, capsys)
    assert rc == 1 and "30.0%" in err
    assert "StorageError" in out and "ALERT" in out
    rc, _, _ = run_sw_here(["stats"], settings, monkeypatch, capsys)
    assert rc == 0  # without --check the alert does not change the exit status


def test_monitor_once_check_and_an_unreachable_redis(redis_url: str, monkeypatch, capsys) -> None:
    settings = fast_settings(redis_url, OPS, alert_error_rate=0.2)
    seed(redis_url, requests=10, errors=5)
    rc, out, err = run_sw_here(["monitor", "--once", "--check"], settings, monkeypatch, capsys)
    assert rc == 1 and "Errors by type" in out and "50.0%" in err
    rc, _, _ = run_sw_here(["monitor", "--once"], settings, monkeypatch, capsys)
    assert rc == 0

    down = settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    rc, _, err = run_sw_here(["stats"], down, monkeypatch, capsys)
    assert rc == 2 and "cannot reach Redis" in err


def start_metrics(settings: Any, port: int, **popen: Any) -> subprocess.Popen[str]:
    """``sw metrics`` on ``127.0.0.1:port`` in a process of its own (pipes for its output)."""
    return subprocess.Popen(
        [*sw_command(), "metrics", "--port", str(port), "--host", "127.0.0.1"],
        cwd=REPO,
        env=worker_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def test_metrics_command_serves_until_interrupted(redis_url: str) -> None:
    settings = fast_settings(redis_url, OPS)
    seed(redis_url, requests=4, errors=1)
    port = free_port()
    proc = start_metrics(settings, port)
    try:
        url = f"http://127.0.0.1:{port}/metrics"

        def scrape() -> str | None:
            try:
                return urllib.request.urlopen(url, timeout=2).read().decode()
            except OSError:
                return None

        body = wait_until_sync(scrape, 30, "sw metrics to serve")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(body)
            for s in f.samples
        }
        assert samples[("sw_requests_total", ())] == 4
        assert samples[("sw_errors_total", (("type", "StorageError"),))] == 1
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert f"127.0.0.1:{port}/metrics" in err  # a message: stderr


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_metrics_command_stops_on_either_signal_even_started_ignoring_sigint(
    redis_url: str,
) -> None:
    """A non-interactive shell starts a background job with SIGINT ignored, which Python
    keeps: ``sw metrics`` still stops on SIGINT, and on SIGTERM (``docker stop``)."""
    settings = fast_settings(redis_url, OPS)
    for sig in (signal.SIGINT, signal.SIGTERM):
        port = free_port()
        proc = start_metrics(settings, port, preexec_fn=_ignore_sigint)
        url = f"http://127.0.0.1:{port}/metrics"

        def scrape(url: str = url) -> str | None:
            try:
                return urllib.request.urlopen(url, timeout=2).read().decode()
            except OSError:
                return None

        try:
            wait_until_sync(scrape, 30, "sw metrics to serve")
        finally:
            proc.send_signal(sig)
            _out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, (sig, err)

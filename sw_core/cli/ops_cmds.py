"""Operator commands: ``sw stats``, ``sw monitor``, ``sw health``, ``sw metrics`` (``sw dlq``:
:mod:`sw_core.cli.dlq_cmds`)."""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from sw_core.cli.flags import Subparsers, add_cli_flags, settings_from_args
from sw_core.ops.dashboard import render_dashboard, render_unreachable
from sw_core.settings import redact_url

if TYPE_CHECKING:
    from sw_core.ops.monitor import StreamingMonitor

#: Settings every ops command takes as flags.
OPS_FLAGS = ["redis_url", "cache_redis_url", "key_prefix", "alert_error_rate", "heartbeat_ttl_s"]
#: More flags for ``sw health`` (storage and the cache budget it checks).
HEALTH_FLAGS = [
    *OPS_FLAGS,
    "s3_endpoint",
    "s3_bucket",
    "s3_access_key",
    "s3_secret_key",
    "s3_secure",
    "s3_region",
    "backup_dir",
    "cache_size_mb",
    "timeout_seconds",
]
#: Port of ``sw metrics`` when neither --port nor SW_METRICS_PORT is given.
DEFAULT_METRICS_PORT = 9108
_STATUS_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def register(subparsers: Subparsers) -> None:
    _register_stats(subparsers)
    _register_monitor(subparsers)
    _register_health(subparsers)
    _register_metrics(subparsers)


# ---------------------------------------------------------------------------- parsers
def _register_stats(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "stats",
        help="print the cluster's counters, queue, latency and workers once",
        description=(
            "One snapshot of the whole system read from Redis (StreamingMonitor.get_stats). "
            "Exit status: 0; 1 with --check when the error rate (errors / total_requests) is "
            "over SW_ALERT_ERROR_RATE; 2 when Redis cannot be reached."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when the error rate is over the threshold"
    )
    add_cli_flags(parser, OPS_FLAGS)
    parser.set_defaults(handler=_stats)


def _register_monitor(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "monitor",
        help="live dashboard: queue, throughput, latency, errors, cache, workers",
        description=(
            "Redraws the dashboard every --interval seconds until Ctrl-C (exit 0; the "
            "terminal is restored). With --check it stops at the first frame whose error rate "
            "is over SW_ALERT_ERROR_RATE and exits 1. --once prints one frame and exits."
        ),
    )
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between frames (default 1)"
    )
    parser.add_argument("--once", action="store_true", help="print one frame and exit")
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 as soon as the error rate is over the threshold",
    )
    add_cli_flags(parser, OPS_FLAGS)
    parser.set_defaults(handler=_monitor)


def _register_health(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "health",
        help="check Redis, storage and worker heartbeats; exit 0 healthy, 1 not",
        description=(
            "Checks: Redis answers and its maxmemory-policy keeps the queues (warns on "
            "allkeys-*); the S3 bucket(s) exist and SW_BACKUP_DIR is readable; inference and "
            "loader workers heartbeat within SW_HEARTBEAT_TTL_S. Exit status: 0 no check "
            "failed (warnings allowed); 1 a check failed."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--require",
        default="inference,loader",
        help="worker kinds that must heartbeat, comma-separated ('' for none)",
    )
    parser.add_argument("--no-storage", action="store_true", help="skip the storage checks")
    parser.add_argument(
        "--this-host",
        action="store_true",
        help="only workers on this host count (a container's health check: its own worker)",
    )
    add_cli_flags(parser, HEALTH_FLAGS)
    parser.set_defaults(handler=_health)


def _register_metrics(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "metrics",
        help="serve cluster-wide Prometheus /metrics until Ctrl-C",
        description=(
            "An exporter process: the same /metrics every worker serves when SW_METRICS_PORT "
            "is set (all numbers are cluster-wide, read from Redis at each scrape)."
        ),
    )
    parser.add_argument("--port", type=int, default=None, help="port (SW_METRICS_PORT, else 9108)")
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (0.0.0.0)")
    add_cli_flags(parser, OPS_FLAGS)
    parser.set_defaults(handler=_metrics)


# ---------------------------------------------------------------------------- handlers
def _stats(args: argparse.Namespace) -> int:
    from sw_core.ops.monitor import StreamingMonitor

    settings = settings_from_args(args)
    with StreamingMonitor(settings=settings) as monitor:
        stats = monitor.get_stats_sync()
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True, default=str))
    else:
        console = Console()
        console.print(render_dashboard(stats, source=redact_url(settings.redis_url), height=200))
    if args.check and stats["alert"]:
        print(f"sw stats: {stats['alert_reason']}", file=sys.stderr)
        return 1
    return 0


def _monitor(args: argparse.Namespace) -> int:
    from sw_core.ops.monitor import StreamingMonitor

    settings = settings_from_args(args)
    interval_s = max(0.2, float(args.interval))
    source = redact_url(settings.redis_url)
    console = Console()
    monitor = StreamingMonitor(settings=settings)
    alert: str | None = None
    try:
        if args.once:
            stats = monitor.get_stats_sync()
            console.print(render_dashboard(stats, source=source, height=console.height))
            alert = stats["alert_reason"] if stats["alert"] else None
        else:
            alert = _live(console, monitor, source, interval_s, check=args.check)
    except KeyboardInterrupt:
        pass
    finally:
        monitor.close()
    if args.check and alert:
        print(f"sw monitor: {alert}", file=sys.stderr)
        return 1
    return 0


def _live(
    console: Console, monitor: StreamingMonitor, source: str, interval_s: float, *, check: bool
) -> str | None:
    """Redraw until Ctrl-C (or, with ``check``, the first alert, whose reason is returned)."""
    import redis.exceptions

    with Live(console=console, screen=True, auto_refresh=False) as live:
        while True:
            try:
                stats = monitor.get_stats_sync()
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                live.update(render_unreachable(source, exc, interval_s), refresh=True)
            else:
                frame = render_dashboard(
                    stats, source=source, interval_s=interval_s, height=console.height
                )
                live.update(frame, refresh=True)
                if check and stats["alert"]:
                    time.sleep(min(interval_s, 1.0))  # leave the alert frame visible briefly
                    return str(stats["alert_reason"])
            time.sleep(interval_s)


def _health(args: argparse.Namespace) -> int:
    from sw_core.ops.health import check_health

    settings = settings_from_args(args)
    kinds = [k.strip() for k in args.require.split(",") if k.strip()]
    host = socket.gethostname() if args.this_host else None
    report = check_health(
        settings, require_kinds=kinds, check_storage=not args.no_storage, host=host
    )
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        table = Table(title=f"Surfing Weights health ({redact_url(settings.redis_url)})")
        table.add_column("check", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("detail")
        for check in report.checks:
            table.add_row(
                check.name, Text(check.status, style=_STATUS_STYLE[check.status]), check.detail
            )
        console = Console()
        console.print(table)
        verdict = "healthy" if report.ok else f"UNHEALTHY: {len(report.failed)} check(s) failed"
        console.print(Text(verdict, style="green" if report.ok else "bold red"))
    return 0 if report.ok else 1


def _stop_on_signals() -> None:
    """SIGINT and SIGTERM stop ``sw metrics``, even when it was started with SIGINT ignored
    (as a non-interactive shell starts a background job: Python then installs no handler)."""

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)


def _metrics(args: argparse.Namespace) -> int:
    from sw_core.ops.prometheus import start_metrics_server

    settings = settings_from_args(args)
    port = args.port if args.port is not None else (settings.metrics_port or DEFAULT_METRICS_PORT)
    server = start_metrics_server(port, settings, host=args.host)
    print(
        f"serving {server.url} (cluster-wide, from {redact_url(settings.redis_url)}); Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )
    _stop_on_signals()
    try:
        while True:
            # short sleeps: a signal delivered to another thread of the process reaches
            # Python's handler only when this (main) thread next runs
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0

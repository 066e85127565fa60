"""Operator commands: ``sw stats``, ``sw monitor``, ``sw health``, ``sw dlq ...``, ``sw metrics``."""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from sw_core.cli.flags import add_cli_flags, settings_from_args
from sw_core.exceptions import JobError
from sw_core.ops.dashboard import render_dashboard, render_unreachable
from sw_core.queue_redis import queue_redis_sync
from sw_core.settings import redact_url

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


def register(subparsers: Any) -> None:
    _register_stats(subparsers)
    _register_monitor(subparsers)
    _register_health(subparsers)
    _register_dlq(subparsers)
    _register_metrics(subparsers)


# ---------------------------------------------------------------------------- parsers
def _register_stats(subparsers: Any) -> None:
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


def _register_monitor(subparsers: Any) -> None:
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


def _register_health(subparsers: Any) -> None:
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


def _register_dlq(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "dlq",
        help="list, show, replay or purge dead letters",
        description=(
            "Dead letters are jobs that failed permanently or ran out of retries (stream "
            "sw:dlq). Replay puts a job back on sw:jobs with attempts reset (its job hash "
            "counts replays); purge deletes them after confirmation."
        ),
    )
    actions = parser.add_subparsers(dest="dlq_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="the oldest dead letters, one line each")
    listing.add_argument("--count", type=int, default=50, help="most letters shown (50)")
    listing.add_argument("--newest", action="store_true", help="newest first")
    listing.add_argument("--json", action="store_true", help="print JSON")
    show = actions.add_parser("show", help="every field of one dead letter")
    show.add_argument("id", help="dead-letter entry id (from `sw dlq list`)")
    show.add_argument("--json", action="store_true", help="print JSON")
    replay = actions.add_parser(
        "replay",
        help="put dead letters back on the jobs stream",
        description="Exit status: 0 all replayed; 1 a letter was missing or not replayable.",
    )
    replay.add_argument("ids", nargs="*", metavar="ID", help="dead-letter entry ids")
    replay.add_argument("--all", action="store_true", help="every replayable dead letter")
    purge = actions.add_parser(
        "purge",
        help="delete every dead letter (asks first)",
        description=(
            "Deletes the dead letters listed at the time of the question (newer ones stay). "
            "Asks for 'yes' on stdin unless --yes; without a terminal or input it refuses "
            "(exit 1)."
        ),
    )
    purge.add_argument("--yes", action="store_true", help="do not ask")
    for sub in (listing, show, replay, purge):
        add_cli_flags(sub, ["redis_url", "key_prefix", "result_ttl_s"])
    parser.set_defaults(handler=_dlq)


def _register_metrics(subparsers: Any) -> None:
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
    console: Console, monitor: Any, source: str, interval_s: float, *, check: bool
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
            table.add_row(check.name, Text(check.status, style=_STATUS_STYLE[check.status]),
                          check.detail)  # fmt: skip
        console = Console()
        console.print(table)
        verdict = "healthy" if report.ok else f"UNHEALTHY: {len(report.failed)} check(s) failed"
        console.print(Text(verdict, style="green" if report.ok else "bold red"))
    return 0 if report.ok else 1


def _dlq(args: argparse.Namespace) -> int:

    from sw_core.pipeline.dlq import DeadLetterQueue

    settings = settings_from_args(args)
    client = queue_redis_sync(settings)
    try:
        dlq = DeadLetterQueue(client, settings)
        action = {
            "list": _dlq_list,
            "show": _dlq_show,
            "replay": _dlq_replay,
            "purge": _dlq_purge,
        }[args.dlq_action]
        return action(dlq, args)
    finally:
        client.close()


def _dlq_list(dlq: Any, args: argparse.Namespace) -> int:
    letters = dlq.list(max(1, args.count), newest_first=args.newest)
    total = dlq.count()
    if args.json:
        print(json.dumps([letter.as_dict() for letter in letters], indent=2, default=str))
        return 0
    # One block per letter, ids whole on their own columns (pasteable into `sw dlq show`),
    # the error wrapped below: fits 80 columns, also when piped.
    console = Console()
    console.print(Text(f"Dead letters: {len(letters)} of {total}", style="bold"))
    now_ms = time.time() * 1000
    for letter in letters:
        age = "" if not letter.last_failure_ms else _age((now_ms - letter.last_failure_ms) / 1000)
        head = Text(no_wrap=False, overflow="fold")
        head.append(letter.id, style="bold")
        head.append(f"  {letter.reason}  {letter.model}/{letter.task}  ")
        head.append(f"attempts {letter.attempts}  replays {letter.replays}  {age} ago", style="dim")
        console.print(head)
        console.print(Text(f"  job {letter.job_id}", overflow="fold"))
        error = Text(f"  {letter.error_type}: {letter.error[:300]}", style="red", overflow="fold")
        console.print(error)
    return 0


def _dlq_show(dlq: Any, args: argparse.Namespace) -> int:
    try:
        letter = dlq.show(args.id)
    except JobError as exc:
        print(f"sw dlq show: {exc}", file=sys.stderr)
        return 1
    data = letter.as_dict()
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    table = Table(title=f"Dead letter {letter.id}", show_header=False)
    table.add_column("field", no_wrap=True, style="bold")
    table.add_column("value", overflow="fold")
    for name, value in data.items():
        text = json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)
        table.add_row(name, text)
    Console().print(table)
    return 0


def _dlq_replay(dlq: Any, args: argparse.Namespace) -> int:
    if args.all == bool(args.ids):
        print("sw dlq replay: give dead-letter ids or --all (not both)", file=sys.stderr)
        return 2
    status = 0
    if args.all:
        done, skipped = dlq.replay_all()
        for letter_id, new_id in done:
            print(f"replayed {letter_id} -> jobs entry {new_id}")
        for letter in skipped:
            print(f"skipped {letter.id}: {letter.why_not_replayable()}", file=sys.stderr)
        print(f"{len(done)} replayed, {len(skipped)} left in the dead-letter stream")
        return 0
    for letter_id in args.ids:
        try:
            new_id, replays = dlq.replay(letter_id)
        except JobError as exc:
            print(f"sw dlq replay: {exc}", file=sys.stderr)
            status = 1
            continue
        print(f"replayed {letter_id} -> jobs entry {new_id} (replay #{replays})")
    return status


def _dlq_purge(dlq: Any, args: argparse.Namespace) -> int:
    last = dlq.last_id()
    if last is None:
        print("no dead letters")
        return 0
    count = dlq.count()
    if not args.yes:
        print(f"Delete {count} dead letters (up to {last})? Type 'yes': ", end="",
              file=sys.stderr, flush=True)  # fmt: skip
        answer = sys.stdin.readline() if sys.stdin is not None else ""
        if not answer:
            print("\nsw dlq purge: no answer on stdin; refusing (pass --yes)", file=sys.stderr)
            return 1
        if answer.strip().lower() not in ("y", "yes"):
            print("sw dlq purge: not confirmed; nothing deleted", file=sys.stderr)
            return 1
    deleted = dlq.purge(last)
    print(f"purged {deleted} dead letters")
    return 0


def _metrics(args: argparse.Namespace) -> int:
    from sw_core.ops.prometheus import start_metrics_server

    settings = settings_from_args(args)
    port = args.port if args.port is not None else (settings.metrics_port or DEFAULT_METRICS_PORT)
    server = start_metrics_server(port, settings, host=args.host)
    print(f"serving {server.url} (cluster-wide, from {redact_url(settings.redis_url)}); Ctrl-C stops",
          file=sys.stderr, flush=True)  # fmt: skip
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"

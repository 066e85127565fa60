"""Rich rendering of a :class:`~sw_core.ops.monitor.StreamingMonitor` snapshot.

One frame (:func:`render_dashboard`) fits a 100x30 terminal: a title line, an alert line,
three panels (queue, jobs, cache and storage: with the hits per sweep, the share of each
pass over a model's weights the chunk cache served), latency and errors by type side by side, and
as many workers as there are rows left. ``sw monitor`` redraws it every second or two;
``sw stats`` prints it once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from rich import box
from rich.console import Group, JustifyMethod, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

#: Rows a frame uses besides the worker rows (title, alert, panels, borders, headers).
FIXED_ROWS = 24
#: Most latency tasks and error types shown.
MAX_TABLE_ROWS = 4


def render_dashboard(
    stats: Mapping[str, Any],
    *,
    source: str = "",
    interval_s: float | None = None,
    height: int = 30,
) -> RenderableType:
    """The dashboard for one snapshot; ``height`` bounds the workers shown."""
    return Group(
        _title(stats, source, interval_s),
        _alert_line(stats),
        _columns(_queue_panel(stats), _jobs_panel(stats), _cache_panel(stats)),
        _columns(_latency_panel(stats), _errors_panel(stats)),
        _workers_panel(stats, max(1, height - FIXED_ROWS)),
    )


def render_unreachable(source: str, error: BaseException, interval_s: float | None) -> Text:
    """The frame shown while Redis does not answer."""
    text = _title({"timestamp": time.time()}, source, interval_s)
    text.append(f"\nRedis unreachable: {type(error).__name__}: {error}\n", style="bold red")
    text.append("retrying; check SW_REDIS_URL and that redis-server runs", style="dim")
    return text


# ---------------------------------------------------------------------------- parts
def _title(stats: Mapping[str, Any], source: str, interval_s: float | None) -> Text:
    clock = time.strftime("%H:%M:%S", time.localtime(stats.get("timestamp", time.time())))
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append("Surfing Weights", style="bold cyan")
    if source:
        text.append(f"  {source}")
    text.append(f"  {clock}")
    if interval_s is not None:
        text.append(f"  every {interval_s:g}s  Ctrl-C quits", style="dim")
    return text


def _alert_line(stats: Mapping[str, Any]) -> Text:
    if stats.get("alert"):
        text = f"ALERT: {stats.get('alert_reason')}"
        return Text(text, style="bold white on red", overflow="fold")  # wraps, never cut
    threshold = stats.get("alert_error_rate", 0.0)
    return Text(f"ok: error rate under the {threshold:.0%} alert threshold", style="green")


def _columns(*panels: RenderableType) -> Table:
    grid = Table.grid(expand=True, padding=0)
    for _ in panels:
        grid.add_column(ratio=1)
    grid.add_row(*panels)
    return grid


def _pairs_panel(title: str, rows: list[tuple[str, str, str]]) -> Panel:
    table = Table.grid(padding=(0, 1), expand=True)
    table.add_column(no_wrap=True)
    table.add_column(justify="right", no_wrap=True)
    for name, value, style in rows:
        table.add_row(name, Text(value, style=style))
    return Panel(table, title=title, box=box.ROUNDED, padding=(0, 1))


def _queue_panel(stats: Mapping[str, Any]) -> Panel:
    kinds = stats.get("workers_by_kind", {})
    throughput = stats.get("throughput_jobs_s")
    dead = int(stats.get("dead_letters", 0))
    rows = [
        ("queued", _n(stats.get("queue_length", 0)), ""),
        ("pending", _n(stats.get("pending", 0)), ""),
        ("retries", _n(stats.get("scheduled_retries", 0)), ""),
        ("dead letters", _n(dead), "red" if dead else ""),
        ("inference", _n(kinds.get("inference", 0)), "" if kinds.get("inference") else "red"),
        ("loaders", _n(kinds.get("loader", 0)), ""),
        ("jobs/s", "-" if throughput is None else f"{throughput:.1f}", "bold"),
        ("consumers", _n(stats.get("consumers", 0)), "dim"),
    ]
    return _pairs_panel("Queue", rows)


def _jobs_panel(stats: Mapping[str, Any]) -> Panel:
    rate = float(stats.get("recent_error_rate", 0.0))
    window_s = int(stats.get("alert_window_s", 300))
    label = f"errors {window_s // 60}m" if window_s % 60 == 0 else f"errors {window_s}s"
    rows = [
        ("requests", _n(stats.get("total_requests", 0)), ""),
        ("completed", _n(stats.get("completed", 0)), "green"),
        ("failed/retried", f"{_n(stats.get('failed', 0))}/{_n(stats.get('retried', 0))}", ""),
        ("dead-lettered", _n(stats.get("dead_lettered", 0)), ""),
        ("cancel/expired", f"{_n(stats.get('cancelled', 0))}/{_n(stats.get('expired', 0))}", ""),
        ("errors", _n(stats.get("errors", 0)), "red" if stats.get("errors") else ""),
        (label, f"{rate:.1%}", "bold red" if stats.get("alert") else ""),
        ("threshold", f"{float(stats.get('alert_error_rate', 0.0)):.1%}", "dim"),
    ]
    return _pairs_panel("Jobs", rows)


def _cache_panel(stats: Mapping[str, Any]) -> Panel:
    used, budget = stats.get("cache_bytes", 0), stats.get("cache_budget_bytes", 0)
    rows = [
        ("hit rate", f"{float(stats.get('cache_hit_rate', 0.0)):.1%}", "bold"),
        ("hits/misses", f"{_n(stats.get('cache_hits', 0))}/{_n(stats.get('cache_misses', 0))}", ""),
        ("sweep hits", _per_sweep(stats), ""),
        ("refused", _n(stats.get("cache_refusals", 0)), "dim"),
        ("evictions", _n(stats.get("cache_evictions", 0)), ""),
        ("size", f"{_mib(used)}/{_mib(budget)}", ""),
        ("chunks", _n(stats.get("cache_chunks", 0)), ""),
        ("read", _mib(stats.get("storage_bytes_read", 0)), ""),
        ("failovers", _n(stats.get("storage_failovers", 0)), ""),
        (
            "integrity",
            _n(stats.get("integrity_failures", 0)),
            "red" if stats.get("integrity_failures") else "",
        ),
    ]
    return _pairs_panel("Cache & storage", rows)


def _per_sweep(stats: Mapping[str, Any]) -> str:
    """Share of each sweep's bytes the cache served, and the bytes a sweep reads."""
    if not stats.get("sweeps"):
        return "-"
    rate = float(stats.get("sweep_hit_rate", 0.0))
    return f"{rate:.0%} of {_mib(float(stats.get('sweep_mb', 0.0)) * (1 << 20))}"


def _latency_panel(stats: Mapping[str, Any]) -> Panel:
    table = Table(box=None, padding=(0, 1), expand=True, show_edge=False)
    columns: list[tuple[str, JustifyMethod]] = [
        ("task", "left"),
        ("n", "right"),
        ("p50", "right"),
        ("p95", "right"),
        ("p99", "right"),
    ]
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=True)
    latency = stats.get("latency", {})
    for task in sorted(latency)[:MAX_TABLE_ROWS]:
        row = latency[task]
        table.add_row(
            task,
            _n(row.get("count", 0)),
            _s(row.get("p50")),
            _s(row.get("p95")),
            _s(row.get("p99")),
        )
    for _ in range(MAX_TABLE_ROWS - min(len(latency), MAX_TABLE_ROWS)):
        table.add_row("" if latency else "-", "", "", "", "")
    return Panel(table, title="Latency", box=box.ROUNDED, padding=(0, 1))


def _errors_panel(stats: Mapping[str, Any]) -> Panel:
    table = Table(box=None, padding=(0, 1), expand=True, show_edge=False)
    table.add_column("error type", no_wrap=True)
    table.add_column("count", justify="right", no_wrap=True)
    table.add_column("share", justify="right", no_wrap=True)
    by_type = stats.get("errors_by_type", {})
    total = sum(by_type.values()) or 1
    ranked = sorted(by_type.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = ranked[: MAX_TABLE_ROWS - 1] if len(ranked) > MAX_TABLE_ROWS else ranked
    for name, count in shown:
        table.add_row(Text(name, style="red"), _n(count), f"{count / total:.0%}")
    if len(shown) < len(ranked):
        rest = sum(count for _, count in ranked[len(shown) :])
        table.add_row(f"{len(ranked) - len(shown)} more types", _n(rest), f"{rest / total:.0%}")
    for _ in range(MAX_TABLE_ROWS - min(len(ranked), MAX_TABLE_ROWS)):
        table.add_row("" if ranked else "-", "", "")
    return Panel(table, title="Errors by type", box=box.ROUNDED, padding=(0, 1))


def _workers_panel(stats: Mapping[str, Any], rows: int) -> Panel:
    table = Table(box=None, padding=(0, 1), expand=True, show_edge=False)
    table.add_column("worker", no_wrap=True, overflow="fold")  # ids are never cut
    table.add_column("kind", no_wrap=True)
    table.add_column("doing", no_wrap=True, overflow="ellipsis", ratio=1)
    table.add_column("done", justify="right", no_wrap=True)
    table.add_column("beat", justify="right", no_wrap=True)
    workers = list(stats.get("workers", []))
    shown = workers if len(workers) <= rows else workers[: max(0, rows - 1)]
    for worker in shown:
        table.add_row(
            str(worker.get("id", "?")),
            str(worker.get("kind", "?")),
            _doing(worker),
            _n(worker.get("jobs_done", worker.get("chunks_loaded", 0))),
            f"{float(worker.get('age_s', 0.0)):.1f}s ago",
        )
    if len(shown) < len(workers):
        table.add_row(f"... {len(workers) - len(shown)} more", "", "", "", "")
    if not workers:
        table.add_row(Text("no worker heartbeating", style="red"), "", "", "", "")
    title = f"Workers ({len(workers)} live)"
    return Panel(table, title=title, box=box.ROUNDED, padding=(0, 1))


def _doing(worker: Mapping[str, Any]) -> str:
    current = str(worker.get("current") or "")
    model = str(worker.get("current_model") or "")
    if current:
        return f"{model}: {current}" if model else current
    if worker.get("kind") == "loader":
        failed = worker.get("loads_failed")
        return f"loads failed: {failed}" if failed not in (None, "", "0") else "idle"
    return "idle"


# ---------------------------------------------------------------------------- formats
def _n(value: Any) -> str:
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return str(value)


def _mib(value: Any) -> str:
    size = float(value or 0)
    if size >= 1 << 30:
        return f"{size / (1 << 30):.1f}G"
    return f"{size / (1 << 20):.1f}M"


def _s(value: Any) -> str:
    if value is None:
        return "-"
    seconds = float(value)
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.2f}s"

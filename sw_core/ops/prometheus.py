"""Prometheus exporter: cluster-wide metrics read from Redis at each scrape.

The numbers live in Redis (``sw:stats``, the streams, heartbeats, latency histograms), so
any process can export all of them: :class:`ClusterCollector` reads one
:class:`~sw_core.ops.monitor.StreamingMonitor` snapshot per scrape and turns it into metric
families. Every worker that starts :func:`start_metrics_server` therefore shows the same,
cluster-wide ``/metrics``; scrape one of them (or ``sw metrics``), not the sum of all.

Names (counters end in ``_total``):

- ``sw_requests_total``; ``sw_jobs_total{status="completed|failed|retried|dead_lettered"}``;
  ``sw_model_jobs_total{model,status}``; ``sw_errors_total{type=...}``
- ``sw_cache_hits_total``, ``sw_cache_misses_total``, ``sw_cache_evictions_total``,
  ``sw_cache_corruptions_total``
- ``sw_storage_bytes_read_total``, ``sw_storage_retries_total``,
  ``sw_storage_failovers_total``, ``sw_integrity_failures_total``
- gauges ``sw_queue_length``, ``sw_pending_jobs``, ``sw_scheduled_retries``,
  ``sw_dead_letters``, ``sw_workers{kind}``, ``sw_cache_bytes``, ``sw_cache_budget_bytes``,
  ``sw_cache_chunks``, ``sw_error_rate`` (over the last ``SW_ALERT_WINDOW_S``), ``sw_alert``,
  ``sw_up`` (0 when Redis did not answer)
- histogram ``sw_job_latency_seconds{task=...}`` (``_bucket``, ``_sum``, ``_count``)
- the standard ``process_*``, ``python_gc_*`` and ``python_info`` of the serving process
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sw_core import counters as names
from sw_core.ops.metrics import Histogram
from sw_core.ops.monitor import StreamingMonitor
from sw_core.settings import Settings

log = logging.getLogger(__name__)

#: ``sw_jobs_total`` status label -> counter of ``sw:stats``.
JOB_STATUSES: dict[str, str] = {
    "completed": names.COMPLETED,
    "failed": names.FAILED,
    "retried": names.RETRIED,
    "dead_lettered": names.DEAD_LETTERED,
    "cancelled": names.CANCELLED,
    "expired": names.EXPIRED,
}
#: Plain counters: metric name (without ``_total``) -> (counter of ``sw:stats``, help).
PLAIN_COUNTERS: dict[str, tuple[str, str]] = {
    "sw_requests": (names.TOTAL_REQUESTS, "Jobs submitted."),
    "sw_queue_full": (names.QUEUE_FULL, "Submits refused: SW_MAX_QUEUED_JOBS jobs queued."),
    "sw_cache_hits": (names.CACHE_HITS, "Chunk cache lookups that found the chunk."),
    "sw_cache_misses": (names.CACHE_MISSES, "Chunk cache lookups that did not."),
    "sw_cache_evictions": (names.CACHE_EVICTIONS, "Chunks evicted from the cache."),
    "sw_cache_corruptions": (names.CACHE_CORRUPTIONS, "Cached chunks that failed their hash."),
    "sw_cache_refusals": (
        "cache_refusals",
        "Cache misses the cache did not take in (read from storage past it).",
    ),
    "sw_storage_bytes_read": (names.STORAGE_BYTES_READ, "Bytes read from chunk storage."),
    "sw_storage_retries": (names.STORAGE_RETRIES, "Storage calls retried after a failure."),
    "sw_storage_failovers": (names.STORAGE_FAILOVERS, "Reads served by the backup store."),
    "sw_integrity_failures": (names.INTEGRITY_FAILURES, "Chunks that failed their sha256."),
}
#: Gauges: metric name -> (key of the monitor's stats, help).
GAUGES: dict[str, tuple[str, str]] = {
    "sw_queue_length": ("queue_length", "Jobs in the stream that no worker has read yet."),
    "sw_pending_jobs": ("pending", "Jobs read by a worker and not yet acknowledged."),
    "sw_scheduled_retries": ("scheduled_retries", "Jobs waiting for a retry."),
    "sw_dead_letters": ("dead_letters", "Entries in the dead-letter stream."),
    "sw_cache_bytes": ("cache_bytes", "Bytes held by the chunk cache."),
    "sw_cache_budget_bytes": ("cache_budget_bytes", "Byte budget of the chunk cache."),
    "sw_cache_chunks": ("cache_chunks", "Chunks held by the chunk cache."),
    "sw_error_rate": (
        "recent_error_rate",
        "errors / requests over the last SW_ALERT_WINDOW_S seconds (for lifetime or other "
        "windows, use rate() of sw_errors_total and sw_requests_total).",
    ),
}


class ClusterCollector(Collector):
    """Yields every Surfing Weights metric from one monitor snapshot per scrape."""

    def __init__(self, monitor: StreamingMonitor) -> None:
        self.monitor = monitor
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("sw_up", "1 when Redis answered this scrape, else 0.")
        try:
            with self._lock:
                stats, histograms = self.monitor.snapshot_sync()
        except Exception as exc:  # a scrape must answer even when Redis is down
            log.warning("metrics scrape could not read Redis: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from build_metrics(stats, histograms)


def build_metrics(stats: dict[str, Any], histograms: dict[str, Histogram]) -> Iterator[Metric]:
    """Metric families of one :meth:`StreamingMonitor.snapshot`."""
    jobs = CounterMetricFamily("sw_jobs", "Job attempts by outcome.", labels=["status"])
    for status, counter in JOB_STATUSES.items():
        jobs.add_metric([status], stats.get(counter, 0))
    yield jobs
    for metric, (counter, doc) in PLAIN_COUNTERS.items():
        yield CounterMetricFamily(metric, doc, value=stats.get(counter, 0))
    errors = CounterMetricFamily("sw_errors", "Errors by exception type.", labels=["type"])
    for error_type, count in sorted(stats.get("errors_by_type", {}).items()):
        errors.add_metric([error_type], count)
    yield errors
    for metric, (key, doc) in GAUGES.items():
        yield GaugeMetricFamily(metric, doc, value=stats.get(key, 0) or 0)
    alert = GaugeMetricFamily(
        "sw_alert", "1 when sw_error_rate (recent window) is over SW_ALERT_ERROR_RATE."
    )
    alert.add_metric([], 1 if stats.get("alert") else 0)
    yield alert
    by_model = CounterMetricFamily(
        "sw_model_jobs", "Job attempts by model and outcome.", labels=["model", "status"]
    )
    for model, counts in sorted(stats.get("jobs_by_model", {}).items()):
        for status, count in sorted(counts.items()):
            by_model.add_metric([model, status], count)
    yield by_model
    yield from _sweep_metrics(stats)
    workers = GaugeMetricFamily("sw_workers", "Workers heartbeating, by kind.", labels=["kind"])
    for kind, count in sorted(stats.get("workers_by_kind", {}).items()):
        workers.add_metric([kind], count)
    yield workers
    latency = HistogramMetricFamily(
        "sw_job_latency_seconds", "Job latency by task.", labels=["task"]
    )
    for task, hist in sorted(histograms.items()):
        buckets = [(_le(edge), float(n)) for edge, n in hist.cumulative()]
        latency.add_metric([task], buckets, sum_value=hist.sum_s)
    yield latency


#: Per-model sweep counters: metric name (without ``_total``) -> (counter, help).
SWEEP_METRICS: dict[str, tuple[str, str]] = {
    "sw_model_sweeps": (names.SWEEPS, "Passes over a model's weights that read chunks."),
    "sw_model_sweep_bytes": (names.SWEEP_BYTES, "Chunk bytes those passes read."),
    "sw_model_sweep_hit_bytes": (names.SWEEP_HIT_BYTES, "Of them, bytes the chunk cache served."),
}


def _sweep_metrics(stats: dict[str, Any]) -> Iterator[Metric]:
    for metric, (counter, doc) in SWEEP_METRICS.items():
        family = CounterMetricFamily(metric, doc, labels=["model"])
        for model, counts in sorted(stats.get("sweeps_by_model", {}).items()):
            family.add_metric([model], counts.get(counter, 0))
        yield family


def _le(edge: float) -> str:
    return "+Inf" if math.isinf(edge) else repr(float(edge))


def metrics_registry(
    settings: Settings, monitor: StreamingMonitor | None = None
) -> CollectorRegistry:
    """A fresh ``CollectorRegistry`` holding a :class:`ClusterCollector`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(monitor or StreamingMonitor(settings=settings)))
    # the standard process_* (memory, CPU, open files), python_gc_* and python_info metrics
    # of the process that serves /metrics: each worker with SW_METRICS_PORT, or sw metrics
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def render_metrics(settings: Settings, monitor: StreamingMonitor | None = None) -> str:
    """The ``/metrics`` text for the current state (what a scrape would return)."""
    return generate_latest(metrics_registry(settings, monitor)).decode()


@dataclass
class MetricsServer:
    """A running ``/metrics`` HTTP server; :meth:`stop` shuts it down."""

    port: int
    host: str
    monitor: StreamingMonitor
    _server: WSGIServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        """Stop serving and close the Redis connection."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self.monitor.close()


def start_metrics_server(port: int, settings: Settings, *, host: str = "0.0.0.0") -> MetricsServer:
    """Serve cluster-wide ``/metrics`` on ``host:port`` from a daemon thread.

    Args:
        port: TCP port (0 picks a free one; see :attr:`MetricsServer.port`).
        settings: Redis URL, key prefix and thresholds.
        host: address to bind.

    Raises:
        OSError: the port is taken.
    """
    monitor = StreamingMonitor(settings=settings)
    server, thread = start_http_server(
        port, addr=host, registry=metrics_registry(settings, monitor)
    )
    bound = int(server.server_port)
    log.info("serving Prometheus metrics on %s:%d/metrics", host, bound)
    return MetricsServer(bound, host, monitor, server, thread)


def maybe_start_metrics_server(settings: Settings) -> MetricsServer | None:
    """:func:`start_metrics_server` on ``settings.metrics_port``; None when it is unset.

    Meant for worker start-up. A port already taken (another worker on this host serves
    the same cluster-wide numbers) is logged and skipped, never fatal.
    """
    if settings.metrics_port is None:
        return None
    try:
        return start_metrics_server(settings.metrics_port, settings)
    except OSError as exc:
        log.warning(
            "not serving /metrics on port %d (%s); another process on this host probably "
            "does, and its numbers are cluster-wide",
            settings.metrics_port,
            exc,
        )
        return None

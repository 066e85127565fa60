"""The gateway's own numbers: requests by route and status, open requests, time to first
token, tokens served -- for ``/api/status`` (plain counters) and ``/metrics`` (Prometheus).

Routes are the application's route templates (``/v1/models/{name:path}``), or
``unmatched`` for a path no route serves: every label set is bounded, so nothing a client
sends -- however many distinct paths -- grows the gateway's memory.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge as PromGauge

#: Route label of a path no route serves.
UNMATCHED = "unmatched"
#: HTTP methods kept as labels; any other is ``other``.
METHODS = frozenset({"GET", "POST", "OPTIONS", "HEAD", "PUT", "DELETE", "PATCH"})
#: Buckets (s) of the time to first token and of request durations.
SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
#: Time-to-first-token values kept for the status page's chart.
RECENT_TTFT = 512
#: Content type of the Prometheus text format.
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class GatewayCounters:
    """Requests served by this gateway, by route and by status; requests open now; times to
    first token; tokens served. Also exported as Prometheus metrics (:meth:`prometheus`)."""

    def __init__(self) -> None:
        self.started = time.time()
        self.by_status: Counter[int] = Counter()
        self.by_route: Counter[str] = Counter()
        self.open_requests = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        #: (unix time, seconds) of recent first tokens, newest last.
        self.recent_ttft: deque[tuple[float, float]] = deque(maxlen=RECENT_TTFT)
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self._requests = PromCounter(
            "sw_gateway_requests",
            "HTTP requests answered by this gateway",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self._durations = Histogram(
            "sw_gateway_request_duration_seconds",
            "Time from a request's start to the end of its answer (streams included)",
            ["route"],
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )
        self._ttft = Histogram(
            "sw_gateway_ttft_seconds",
            "Time from a streamed request's start to its first token",
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )
        self._stream_errors = PromCounter(
            "sw_gateway_stream_errors",
            "Streams that ended with an error event after their 200 (status it stands for)",
            ["status"],
            registry=self.registry,
        )
        self._tokens = PromCounter(
            "sw_gateway_tokens", "Tokens of answered requests", ["kind"], registry=self.registry
        )
        open_gauge = PromGauge(
            "sw_gateway_open_requests",
            "Requests holding a slot of SW_GATEWAY_MAX_STREAMS now (streams included)",
            registry=self.registry,
        )
        open_gauge.set_function(lambda: self.open_requests)

    def count(self, route: str, status: int, method: str = "POST", duration_s: float = 0.0) -> None:
        """One answered request (``route``: a route template or :data:`UNMATCHED`)."""
        self.by_route[route] += 1
        self.by_status[status] += 1
        method = method if method in METHODS else "other"
        self._requests.labels(route, method, str(status)).inc()
        self._durations.labels(route).observe(duration_s)

    def stream_error(self, status: int) -> None:
        """A stream that had begun (200) ended with an error event of ``status``."""
        self.by_route["stream errors"] += 1
        self.by_status[status] += 1
        self._stream_errors.labels(str(status)).inc()

    def first_token(self, seconds: float) -> None:
        self.recent_ttft.append((time.time(), seconds))
        self._ttft.observe(seconds)

    def tokens(self, prompt: int, completion: int) -> None:
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self._tokens.labels("prompt").inc(prompt)
        self._tokens.labels("completion").inc(completion)

    def prometheus(self) -> bytes:
        """Every metric in Prometheus' text format."""
        return generate_latest(self.registry)

    def as_dict(self) -> dict[str, Any]:
        errors = sum(n for status, n in self.by_status.items() if status >= 400)
        return {
            "uptime_s": round(time.time() - self.started, 1),
            "requests": sum(self.by_route.values()),
            "errors": errors,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "by_route": dict(sorted(self.by_route.items())),
            "open_requests": self.open_requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }

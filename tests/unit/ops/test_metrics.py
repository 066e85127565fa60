"""Latency histogram math: buckets, cumulative counts, percentile estimates."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sw_core.ops.metrics import (
    BUCKET_FIELDS,
    INF_BUCKET,
    LATENCY_BUCKETS_S,
    Histogram,
    bucket_field,
    bucket_of,
)

observations = st.lists(
    st.floats(min_value=0.0, max_value=1000.0, allow_nan=False, allow_infinity=False),
    min_size=1,
    max_size=300,
)


def test_bucket_edges_are_inclusive_and_sorted() -> None:
    assert list(LATENCY_BUCKETS_S) == sorted(set(LATENCY_BUCKETS_S))
    assert bucket_of(0.0) == "bucket:0.005"
    assert bucket_of(0.005) == "bucket:0.005"
    assert bucket_of(0.0050001) == "bucket:0.01"
    assert bucket_of(0.5) == "bucket:0.5"
    assert bucket_of(300.0) == "bucket:300"
    assert bucket_of(300.1) == INF_BUCKET
    assert bucket_field(math.inf) == INF_BUCKET
    assert len(BUCKET_FIELDS) == len(LATENCY_BUCKETS_S) + 1


def test_a_known_histogram() -> None:
    hist = Histogram.from_observations([0.02, 0.03, 0.2])
    assert hist.count == 3
    assert hist.sum_s == pytest.approx(0.25)
    # rank 1.5 lies halfway through the (0.025, 0.05] bucket
    assert hist.quantile(0.5) == pytest.approx(0.0375)
    # ranks in the last bucket are capped by the largest observation
    assert hist.quantile(0.99) == pytest.approx(0.2)
    assert hist.cumulative()[-1] == (math.inf, 3)
    summary = hist.summary()
    assert summary["count"] == 3 and summary["max_s"] == pytest.approx(0.2)
    assert summary["p50"] <= summary["p95"] <= summary["p99"]


def test_empty_histogram_has_no_percentiles() -> None:
    hist = Histogram()
    assert hist.count == 0 and hist.quantile(0.5) is None and hist.mean_s is None
    with pytest.raises(ValueError):
        hist.quantile(1.5)


def test_slow_observations_land_in_the_inf_bucket() -> None:
    hist = Histogram.from_observations([1000.0, 2000.0])
    assert hist.counts[-1] == 2
    assert hist.quantile(0.5) == pytest.approx(2000.0)  # the max: no upper edge to interpolate


def test_from_hash_reads_what_redis_returns() -> None:
    raw = {
        b"bucket:0.01": b"2",
        b"bucket:+Inf": b"1",
        b"count": b"3",
        b"sum_us": b"400020000",
        b"max_us": b"400000000",
    }
    hist = Histogram.from_hash(raw)
    assert hist.count == 3
    assert hist.counts[BUCKET_FIELDS.index("bucket:0.01")] == 2
    assert hist.sum_s == pytest.approx(400.02)
    assert hist.max_s == pytest.approx(400.0)
    assert hist.quantile(1.0) == pytest.approx(400.0)


@settings(max_examples=200, deadline=None)
@given(observations, st.floats(min_value=0.01, max_value=1.0))
def test_quantile_lies_in_the_bucket_of_the_true_quantile(values: list[float], q: float) -> None:
    hist = Histogram.from_observations(values)
    ordered = sorted(values)
    true = ordered[max(0, math.ceil(q * len(ordered)) - 1)]  # nearest rank
    index = BUCKET_FIELDS.index(bucket_of(true))
    lower = LATENCY_BUCKETS_S[index - 1] if index > 0 else 0.0
    upper = LATENCY_BUCKETS_S[index] if index < len(LATENCY_BUCKETS_S) else max(values)
    estimate = hist.quantile(q)
    assert estimate is not None
    assert lower - 1e-9 <= estimate <= upper + 1e-9
    assert estimate <= max(values) + 1e-6


@settings(max_examples=100, deadline=None)
@given(observations)
def test_percentiles_are_ordered_and_cumulative_counts_grow(values: list[float]) -> None:
    hist = Histogram.from_observations(values)
    p50, p95, p99 = (hist.quantile(q) for q in (0.5, 0.95, 0.99))
    assert p50 <= p95 <= p99  # type: ignore[operator]
    counts = [n for _, n in hist.cumulative()]
    assert counts == sorted(counts) and counts[-1] == len(values)

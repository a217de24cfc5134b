"""Statistics: percentiles as numpy computes them, summaries with exact values."""

from __future__ import annotations

import math
import statistics

import pytest

from pytest_llmperf.measure.stats import (
    distribution,
    mean_ci,
    median_ci,
    percentile,
    precision_reached,
    relative_half_width,
    summarize,
)
from pytest_llmperf.records import RequestRecord, Scenario

MS = 1_000_000


@pytest.mark.parametrize("q", [1, 10, 50, 90, 95, 99])
@pytest.mark.parametrize("values", [[1.0, 2.0, 3.0, 4.0], [3.0, 1.0, 10.0, 2.5, 8.0, 8.0, 0.5]])
def test_percentile_is_linear_like_numpy(values: list[float], q: int) -> None:
    # statistics' "inclusive" method is numpy's default linear interpolation
    expected = statistics.quantiles(values, n=100, method="inclusive")[q - 1]
    assert percentile(sorted(values), q) == pytest.approx(expected, abs=1e-12)


def test_percentile_exact_values() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 90) == pytest.approx(3.7)
    assert percentile([1.0, 2.0, 3.0, 4.0], 0) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    assert percentile([7.0], 99) == 7.0


def test_distribution_exact() -> None:
    d = distribution([2, 4, 4, 4, 5, 5, 7, 9])
    assert d is not None
    assert (d.count, d.mean, d.min, d.max) == (8, 5.0, 2.0, 9.0)
    assert d.stddev == pytest.approx(math.sqrt(32 / 7))  # sample stddev
    assert d.p50 == 4.5
    assert d.p90 == pytest.approx(7.6)
    assert d.p99 == pytest.approx(8.86)


def test_distribution_edges() -> None:
    assert distribution([]) is None
    one = distribution([3.5])
    assert one is not None
    assert (one.stddev, one.p50, one.p99) == (0.0, 3.5, 3.5)


def test_median_ci_uses_order_statistics() -> None:
    values = list(range(1, 101))  # n = 100: ranks 40 and 61
    assert median_ci(values) == (40.0, 61.0)
    assert median_ci([1, 2, 3, 4, 5]) is None


def test_mean_ci_student_t() -> None:
    lo, hi = mean_ci([1.0, 2.0, 3.0])  # type: ignore[misc]
    half = 4.303 * 1.0 / math.sqrt(3)
    assert (lo, hi) == (pytest.approx(2 - half), pytest.approx(2 + half))
    assert mean_ci([1.0]) is None
    assert relative_half_width((9.0, 11.0), 10.0) == 0.1
    assert relative_half_width(None, 10.0) == math.inf


def make(i: int, sent: int, ttft: int, gap: int, tokens: int, **kw: object) -> RequestRecord:
    chunk_ns = tuple(sent + ttft + k * gap for k in range(tokens))
    base: dict[str, object] = {
        "request_id": f"r{i}",
        "scenario": "s",
        "input_tokens_requested": 16,
        "output_tokens_requested": 4,
        "scheduled_ns": sent,
        "sent_ns": sent,
        "end_ns": chunk_ns[-1],
        "chunk_ns": chunk_ns,
        "chunk_tokens": (1,) * tokens,
        "input_tokens": 16,
        "output_tokens": tokens,
    }
    base.update(kw)
    return RequestRecord(**base)  # type: ignore[arg-type]


def test_summarize_exact() -> None:
    sc = Scenario(input_tokens=16, output_tokens=4, concurrency=2, requests=4, warmup=1)
    records = [
        make(0, 0, 50 * MS, 50 * MS, 4, warmup=True),  # excluded
        make(1, 1_000 * MS, 100 * MS, 10 * MS, 4),  # ends at 1130 ms
        make(2, 1_000 * MS, 200 * MS, 20 * MS, 4, scheduled_ns=990 * MS),  # ends at 1260 ms
        make(3, 1_130 * MS, 100 * MS, 10 * MS, 3),  # a length miss, ends at 1250 ms
        make(4, 1_260 * MS, 0, 0, 1, chunk_ns=(), error="HTTP 500: x", end_ns=2_000 * MS),
    ]
    s = summarize(records, sc)
    assert (s.requests, s.completed, s.errors) == (4, 3, 1)
    assert s.error_rate == 0.25
    assert s.duration_s == pytest.approx(1.0)  # 1000 ms .. 2000 ms
    assert s.ttft_ms is not None
    assert s.ttft_ms.p50 == 100.0
    assert s.ttft_ms.max == 200.0
    assert s.e2e_ms is not None
    assert sorted([s.e2e_ms.min, s.e2e_ms.max]) == [120.0, 260.0]
    assert s.tpot_ms is not None
    assert (s.tpot_ms.min, s.tpot_ms.max) == (10.0, 20.0)
    # ITL pooled over requests: 3 + 3 + 2 gaps
    assert s.itl_ms is not None
    assert s.itl_ms.count == 8
    assert s.itl_ms.mean == pytest.approx((3 * 10 + 3 * 20 + 2 * 10) / 8)
    assert s.queue_ms is not None
    assert s.queue_ms.max == 10.0
    assert s.output_tok_per_s == pytest.approx(11.0)
    assert s.total_tok_per_s == pytest.approx(11.0 + 48.0)
    assert s.request_per_s == pytest.approx(3.0)
    assert s.output_length_misses == 1
    assert s.input_tokens_mean == 16.0
    assert s.output_tokens_mean == pytest.approx(11 / 3)


def test_summarize_without_usage_gives_no_token_rates() -> None:
    sc = Scenario(input_tokens=16, output_tokens=4, requests=1, warmup=0)
    s = summarize([make(1, 0, MS, MS, 4, output_tokens=None, chunk_tokens=())], sc)
    assert s.output_tok_per_s is None
    assert s.total_tok_per_s is None
    assert s.output_length_misses == 1
    assert s.itl_ms is None


def test_summarize_nothing() -> None:
    s = summarize([], Scenario(input_tokens=1, output_tokens=1))
    assert (s.requests, s.completed, s.error_rate, s.ttft_ms, s.output_tok_per_s) == (0, 0, 0.0, None, None)


def test_precision_reached() -> None:
    steady = [make(i, i * MS, MS, MS, 4) for i in range(10)]
    assert precision_reached(steady, 0.05)
    noisy = [make(i, 0, MS, (1 + 9 * (i % 2)) * MS, 4) for i in range(10)]
    assert not precision_reached(noisy, 0.05)
    assert not precision_reached(steady[:5], 0.05)  # too few for a median interval

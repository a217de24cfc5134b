"""Statistics: percentiles as numpy computes them, summaries with exact values."""

from __future__ import annotations

import math
import statistics

import pytest

from pytest_llmperf.measure.stats import (
    adaptive_target_rel_ci,
    distribution,
    effective_samples,
    mean_ci,
    median_ci,
    pairwise_spread,
    percentile,
    precision_reached,
    relative_half_width,
    summarize,
    t_cdf,
    t_quantile,
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


def test_precision_counts_waves_not_requests() -> None:
    # TPOT 10.0 .. 10.9 ms: the median's order-statistic interval over 10 values is the whole range,
    # +-4.3% around 10.45 ms. One after the other that is within 5%; in waves of 4 (3.5 waves' worth
    # of window, so 4 independent samples) it is 4.3% x sqrt(10 / 4) = 6.8%.
    def req(i: int, sent_ms: int) -> RequestRecord:
        return make(i, sent_ms * MS, MS, round((10 + i / 10) * MS), 4)

    one_by_one = [req(i, 40 * i) for i in range(10)]
    in_waves = [req(i, 40 * (i // 4)) for i in range(10)]
    assert precision_reached(one_by_one, 0.05)
    assert not precision_reached(in_waves, 0.05)
    assert precision_reached(in_waves, 0.07)


def test_adaptive_target_is_half_the_tolerance() -> None:
    assert adaptive_target_rel_ci(0.05) == 0.025
    assert adaptive_target_rel_ci(0.10) == 0.05


def test_effective_samples_edges() -> None:
    assert effective_samples(4, 4.0, 1.0) == 4
    assert effective_samples(16, 4.0, 1.0) == 4
    assert effective_samples(16, 4.4, 1.0) == 4  # rounds to the nearest whole wave
    assert effective_samples(3, 0.0, 1.0) == 3  # no window: nothing to go by


@pytest.mark.parametrize(
    ("p", "dof", "expected"),
    # Textbook values of Student's t (two-sided 95% and 99%, one-sided 99.9%).
    [(0.975, 1, 12.706), (0.975, 4, 2.776), (0.995, 10, 3.169), (0.975, 30, 2.042), (0.999, 4, 7.173)],
)
def test_t_quantile_matches_tables(p: float, dof: int, expected: float) -> None:
    assert t_quantile(p, dof) == pytest.approx(expected, abs=5e-4)
    assert t_quantile(1 - p, dof) == pytest.approx(-expected, abs=5e-4)
    assert t_cdf(t_quantile(p, dof), dof) == pytest.approx(p, abs=1e-9)


def test_t_quantile_limits_and_mistakes() -> None:
    assert t_quantile(0.975, 1e7) == pytest.approx(1.959964, abs=1e-6)
    assert t_cdf(0.0, 3) == 0.5
    with pytest.raises(ValueError, match="p must be between 0 and 1"):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError, match="dof > 0"):
        t_quantile(0.9, 0)


def test_pairwise_spread_pools_within_group_differences() -> None:
    # Differences |0-1|, |0-(-1)|, and 0.5, 1.0, 0.5 inside the third group: median 1.0.
    spread = pairwise_spread([[0.0, 1.0], [0.0, -1.0], [5.0, 5.5, 6.0], [9.0]])
    assert spread is not None
    sigma, dof = spread
    assert sigma == pytest.approx(1.0 / (0.6744897501960817 * math.sqrt(2)))
    assert dof == 1 + 1 + 2
    assert pairwise_spread([[1.0], []]) is None


def test_pairwise_spread_estimates_a_normal_sd() -> None:
    import random

    rng = random.Random(7)
    groups = [[rng.gauss(level, 0.05) for _ in range(3)] for level in range(400)]
    spread = pairwise_spread(groups)
    assert spread is not None
    assert spread[0] == pytest.approx(0.05, rel=0.08)  # 1200 pairs: within a few percent

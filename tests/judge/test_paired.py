"""Paired A/B statistics on per-block ratios: exact figures for known blocks."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from pytest_llmperf.judge.paired import (
    MIN_BLOCKS,
    Block,
    fold,
    judge_blocks,
    orders,
)
from pytest_llmperf.measure.stats import t_quantile
from pytest_llmperf.records import Outcome


def blocks(ratios: list[float], drift: list[float] | None = None, metric: str = "tpot_ms") -> list[Block]:
    """Blocks whose baseline wanders with ``drift`` and whose candidate is ``ratio`` times it."""
    drift = drift or [1.0] * len(ratios)
    return [
        Block(i, "AB", {metric: 50.0 * d}, {metric: 50.0 * d * r})
        for i, (r, d) in enumerate(zip(ratios, drift, strict=True))
    ]


def test_the_estimate_is_the_geometric_mean_ratio_with_a_t_interval() -> None:
    ratios = [1.08, 1.12, 1.10, 1.09, 1.11, 1.10]
    verdict = judge_blocks(blocks(ratios), tolerance=0.02, comparisons=1)
    (tpot,) = verdict.metrics
    logs = [math.log(r) for r in ratios]
    mean = sum(logs) / 6
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / 5)
    half = t_quantile(0.975, 5) * sd / math.sqrt(6)
    assert tpot.ratio == pytest.approx(math.exp(mean))
    assert tpot.low == pytest.approx(math.exp(mean - half))
    assert tpot.high == pytest.approx(math.exp(mean + half))
    assert tpot.regressed
    assert tpot.line().startswith("candidate tpot_ms +10.0% (95% CI +8.")
    assert tpot.line().endswith("over 6 blocks vs baseline")
    assert verdict.reasons()[0].startswith("candidate tpot_ms +10.0%")


def test_drift_shared_by_both_sides_cancels() -> None:
    drift = [1.0, 1.1, 1.2, 1.3, 1.35, 1.3, 1.2, 1.1]  # the machine slows 35% and recovers
    same = judge_blocks(blocks([1.0, 1.01, 0.99, 1.0, 1.01, 0.99, 1.0, 1.0], drift), comparisons=15)
    assert same.regressions == ()
    assert same.metrics[0].ratio == pytest.approx(1.0, abs=0.005)
    slower = judge_blocks(blocks([1.1, 1.11, 1.09, 1.1, 1.12, 1.08, 1.1, 1.1], drift), comparisons=15)
    assert [m.metric for m in slower.regressions] == ["tpot_ms"]


def test_a_change_within_tolerance_or_within_noise_passes() -> None:
    small = judge_blocks(blocks([1.01] * 8), tolerance=0.02, comparisons=1)  # certain, but 1% < 2%
    assert small.regressions == ()
    assert small.metrics[0].bar == pytest.approx(0.02)
    noisy = judge_blocks(blocks([1.3, 0.8, 1.25, 0.85, 1.2, 0.9]), comparisons=15)  # +2% in a storm
    assert noisy.regressions == ()
    assert noisy.metrics[0].bar > 0.2  # the run says how little it could resolve


def test_throughput_regresses_downwards() -> None:
    faster = judge_blocks(blocks([1.1] * 6, metric="output_tok_per_s"), comparisons=1)
    assert faster.regressions == ()  # more tokens per second is better
    slower = judge_blocks(blocks([0.9, 0.91, 0.89, 0.9, 0.9, 0.9], metric="output_tok_per_s"), comparisons=1)
    assert [m.metric for m in slower.regressions] == ["output_tok_per_s"]
    assert slower.metrics[0].line().startswith("candidate output_tok_per_s -10.0%")


def test_dropped_blocks_are_counted_and_too_few_is_invalid() -> None:
    kept = blocks([1.0] * MIN_BLOCKS)
    busy = [Block(9, "BA", {"tpot_ms": 50.0}, {"tpot_ms": 90.0}, dropped="machine busy (others 1.0 cores)")]
    verdict = judge_blocks([*kept, *busy])
    assert verdict.valid_blocks == MIN_BLOCKS
    assert verdict.dropped == ("block 10: machine busy (others 1.0 cores)",)
    assert verdict.regressions == ()  # the busy block's +80% never counted
    short = judge_blocks([*kept[:3], *busy])
    assert short.invalid == (
        "only 3 of 4 A/B blocks could be trusted (at least 4 needed); "
        "block 10: machine busy (others 1.0 cores)"
    )
    assert short.reasons() == (short.invalid,)
    assert short.summary_line().startswith("A/B invalid: only 3 of 4")


def test_orders_alternate_from_a_seeded_start() -> None:
    for seed in range(6):
        seq = orders(6, seed)
        assert seq == orders(6, seed)
        assert all(a != b for a, b in itertools.pairwise(seq))
    assert {orders(2, s)[0] for s in range(20)} == {"AB", "BA"}


def test_an_unchanged_pair_fails_rarely_under_bonferroni() -> None:
    rng = random.Random(7)
    failed = 0
    for _ in range(400):
        ratios = [math.exp(rng.gauss(0, 0.07)) for _ in range(8)]
        failed += bool(judge_blocks(blocks(ratios), tolerance=0.0, comparisons=5).regressions)
    assert failed / 400 <= 0.05 / 5 * 2  # one-sided alpha/m, with sampling room


def test_the_ab_verdict_folds_into_the_test_outcome() -> None:
    regressed = judge_blocks(blocks([1.1] * 6), comparisons=1)
    same = judge_blocks(blocks([1.0] * 6), comparisons=1)
    short = judge_blocks(blocks([1.0] * 3), comparisons=1)
    passed = fold(Outcome("pass"), regressed)
    assert passed.kind == "fail-regression"
    assert passed.reasons[0].startswith("candidate tpot_ms +10.0%")
    assert passed.notes[-1].startswith("A/B regression: candidate tpot_ms +10.0%")
    budget = fold(Outcome("fail-budget", ("tpot_ms_p50 60 > 50",)), regressed)
    assert budget.kind == "fail-budget"  # a missed budget keeps its word, the A/B reason joins it
    assert budget.reasons[0] == "tpot_ms_p50 60 > 50"
    assert len(budget.reasons) == 2
    assert fold(Outcome("pass"), same).kind == "pass"
    assert fold(Outcome("pass"), short) == Outcome("invalid", (short.invalid,), (short.summary_line(),))
    errors = Outcome("fail-budget", ("8 of 8 requests failed (...); first: HTTP 503: overloaded",))
    assert fold(errors, short).kind == "fail-budget"  # failed requests are a failure, A/B or not
    busy = Outcome("invalid", ("machine busy",))
    assert fold(busy, regressed).reasons == ("machine busy",)  # an invalid measurement stays invalid

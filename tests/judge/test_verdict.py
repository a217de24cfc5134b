"""Verdicts: the rank-based shift, one-run and history comparisons, tolerances, hardware, busy, precedence."""

from __future__ import annotations

import math
from typing import Any

import pytest
from judge_support import TTFTS, baseline_of, run

from pytest_llmperf.errors import ConfigError
from pytest_llmperf.judge.budgets import parse_marker
from pytest_llmperf.judge.verdict import (
    DEFAULT_TOLERANCES,
    ONE_RUN_NOTE,
    Rules,
    Tolerances,
    check_hardware,
    compare_samples,
    judge,
    parse_tolerances,
    shift_ci,
)
from pytest_llmperf.records import Comparison


def test_shift_of_a_doubled_sample_with_too_few_values_to_bound_it() -> None:
    shift = shift_ci([10, 20, 40], [20, 40, 80])
    assert shift is not None
    # Pairwise ratios: .5 1 1 2 2 2 4 4 8 -> median 2; k = floor(4.5 - 1.96*sqrt(63/12)) = 0 -> unbounded.
    assert (shift.ratio, shift.low, shift.high) == (pytest.approx(2.0), 0.0, math.inf)


def test_shift_interval_is_the_kth_pairwise_ratio_from_each_end() -> None:
    shift = shift_ci([1, 2, 3, 4, 5], [2, 4, 6, 8, 10])
    assert shift is not None
    # 25 sorted ratios .4 .5 .667 .8 1 1 1.2 1.33 1.5 1.6 2 2 2 2 2 2.5 2.67 3 3.33 4 4 5 6 8 10;
    # k = floor(12.5 - 1.96*sqrt(25*11/12)) = 3 -> 3rd (2/3) and 23rd (6).
    assert shift.ratio == pytest.approx(2.0)
    assert shift.low == pytest.approx(2 / 3)
    assert shift.high == pytest.approx(6.0)
    assert (shift.n_baseline, shift.n_current) == (5, 5)


def test_shift_ignores_non_positive_values_and_needs_both_sides() -> None:
    assert shift_ci([], [1.0]) is None
    assert shift_ci([0.0, -1.0], [1.0]) is None


def test_shift_of_large_samples_is_thinned_but_exact_for_a_pure_scale_change() -> None:
    base = [10 + (i % 97) / 10 for i in range(1000)]
    shift = shift_ci(base, [v * 1.1 for v in base])
    assert shift is not None
    assert shift.ratio == pytest.approx(1.1)
    # Values spread uniformly over 10..19.6: with 400 per side the 95% CI is about +-3%.
    assert 1.06 < shift.low < 1.08
    assert 1.12 < shift.high < 1.14
    assert (shift.n_baseline, shift.n_current) == (400, 400)


def test_ten_percent_slower_tpot_is_a_regression() -> None:
    base = [10.0 + i * 0.05 for i in range(16)]
    cmp = compare_samples("tpot_ms", base, [v * 1.1 for v in base], 0.05)
    assert cmp is not None
    assert cmp.regressed
    assert cmp.change == pytest.approx(0.10)
    assert cmp.low > 0.05
    assert (cmp.baseline, cmp.current) == (pytest.approx(10.375), pytest.approx(11.4125))


def test_interleaved_draws_of_one_distribution_are_not_a_regression() -> None:
    values = [10.0 + i * 0.1 for i in range(32)]
    cmp = compare_samples("tpot_ms", values[0::2], values[1::2], 0.05)
    assert cmp is not None
    assert not cmp.regressed
    assert cmp.low < 0 < cmp.high


def test_a_big_change_on_too_few_requests_is_not_a_regression() -> None:
    cmp = compare_samples("e2e_ms", [100, 200, 300], [120, 240, 360], 0.05)
    assert cmp is not None
    assert cmp.change == pytest.approx(0.2)
    assert not cmp.regressed  # the interval is unbounded with 3 + 3 samples


def test_a_certain_change_below_tolerance_is_not_a_regression() -> None:
    base = [10.0 + i * 0.01 for i in range(100)]
    cmp = compare_samples("tpot_ms", base, [v * 1.03 for v in base], 0.05)
    assert cmp is not None
    assert cmp.low > 0
    assert not cmp.regressed


def test_throughput_direction_lower_is_the_regression() -> None:
    base = [100.0 + i for i in range(16)]
    worse = compare_samples("output_tok_per_s", base, [v * 0.9 for v in base], 0.05)
    better = compare_samples("output_tok_per_s", base, [v * 1.1 for v in base], 0.05)
    faster = compare_samples("tpot_ms", base, [v * 0.9 for v in base], 0.05)
    assert worse is not None
    assert better is not None
    assert faster is not None
    assert (worse.regressed, better.regressed, faster.regressed) == (True, False, False)
    assert worse.change == pytest.approx(-0.1)


def test_comparison_reason_line() -> None:
    cmp = Comparison("tpot_ms", 10.0, 11.0, 0.1, 0.08, 0.12, 0.05, 16, 16, True)
    assert cmp.reason() == (
        "tpot_ms +10.0% vs baseline (95% CI +8.0%..+12.0%, tolerance +5%; median 10 -> 11 ms, n=16/16)"
    )
    waves = Comparison("tpot_ms", 10.0, 13.0, 0.3, 0.1, 0.5, 0.05, 10, 10, True, bar=0.25, waves=(3, 3))
    assert waves.reason() == (
        "tpot_ms +30.0% vs one baseline run (95% CI +10.0%..+50.0%, n=10/10 in 3/3 waves; the spread between "
        "runs is unknown, so the bar is +25.0%, not the tolerance +5%; median 10 -> 13 ms)"
    )
    history = Comparison(
        "tpot_ms", 10.0, 12.0, 0.2, 0.1, 0.3, 0.05, 80, 16, True, "history", bar=0.097, spread=0.021, runs=5
    )
    assert history.reason() == (
        "tpot_ms +20.0% vs 5 baseline runs (unchanged runs here vary +-2.1%, so the bar is +9.7%; "
        "tolerance +5%; median 10 -> 12 ms)"
    )
    tput = Comparison("output_tok_per_s", 100.0, 90.0, -0.1, -0.12, math.inf, 0.05, 8, 8, False)
    assert tput.reason() == (
        "output_tok_per_s (per request) -10.0% vs baseline (95% CI -12.0%..inf, tolerance -5%; "
        "median 100 -> 90 tok/s, n=8/8)"
    )


def test_judge_passes_an_unchanged_run_against_its_own_baseline() -> None:
    result = run(TTFTS, 10.0)
    outcome = judge(result, None, baseline_of(result))
    assert outcome.kind == "pass"
    assert outcome.reasons == ()
    assert [c.metric for c in outcome.comparisons] == [
        "ttft_ms",
        "tpot_ms",
        "e2e_ms",
        "itl_ms",
        "output_tok_per_s",
        "error_rate",
    ]
    assert not any(c.regressed for c in outcome.comparisons)


def test_judge_names_each_regressed_metric_and_its_change() -> None:
    outcome = judge(run(TTFTS, 14.0), None, baseline_of(run(TTFTS, 10.0)))
    assert outcome.kind == "fail-regression"
    regressed = {c.metric: round(c.change, 4) for c in outcome.comparisons if c.regressed}
    # E2E = TTFT + 4 ITL: (57.5 + 56) / (57.5 + 40) -> +16.4%, under the one-run bar of 25%.
    assert regressed == {"tpot_ms": 0.4, "itl_ms": 0.4}
    assert outcome.reasons[0] == (
        "tpot_ms +40.0% vs one baseline run (95% CI +40.0%..+40.0%, n=16/16; the spread between runs is "
        "unknown, so the bar is +25.0%, not the tolerance +5%; median 10 -> 14 ms)"
    )


def test_one_baseline_run_lets_a_ten_percent_change_pass_and_says_why() -> None:
    outcome = judge(run(TTFTS, 11.0), None, baseline_of(run(TTFTS, 10.0)))
    assert outcome.kind == "pass"
    tpot = next(c for c in outcome.comparisons if c.metric == "tpot_ms")
    assert (round(tpot.change, 4), tpot.bar, tpot.method, tpot.regressed) == (0.1, 0.25, "samples", False)
    assert tpot.low > 0  # certain, but no larger than unchanged sessions have moved
    assert outcome.notes == (ONE_RUN_NOTE,)
    assert ONE_RUN_NOTE.startswith(
        "one baseline run: the spread between runs is unknown, so a change must exceed 25%"
    )


def test_judge_error_rate_regression_is_absolute() -> None:
    outcome = judge(run(TTFTS, 10.0, errors=1), None, baseline_of(run(TTFTS, 10.0)))
    assert outcome.kind == "fail-regression"
    assert outcome.reasons == ("error_rate 0.0588 vs baseline 0 (+0.0588; tolerance +0.01)",)


def test_precedence_invalid_then_budget_then_regression() -> None:
    base = baseline_of(run(TTFTS, 10.0))
    budgets = parse_marker((), {"tpot_ms_p50": 10.5})
    slow = run(TTFTS, 14.0)
    slow_invalid = run(TTFTS, 14.0, invalid=("client fell behind: loop lag p99 80 ms > 50 ms",))
    assert judge(slow_invalid, budgets, base).reasons == ("client fell behind: loop lag p99 80 ms > 50 ms",)
    assert judge(slow_invalid, budgets, base).kind == "invalid"
    assert judge(slow, budgets, base).kind == "fail-budget"
    assert judge(slow, budgets, base).reasons == ("tpot_ms p50 = 14 ms exceeds budget 10.5 ms (marker)",)
    assert judge(slow, None, base).kind == "fail-regression"
    assert judge(run(TTFTS, 10.0), budgets, base).kind == "pass"


def test_baseline_of_another_case_is_noted_not_compared() -> None:
    base = baseline_of(run(TTFTS, 10.0, concurrency=4))
    outcome = judge(run(TTFTS, 20.0), None, base)
    assert outcome.kind == "pass"
    assert outcome.notes == ("baseline measured another case, not compared: concurrency 4 -> 1",)
    assert outcome.comparisons == ()


def machine(gpu: str | None, driver: str | None, engine: str, **extra: object) -> dict[str, Any]:
    llmperf: dict[str, Any] = {
        "schema": 1,
        "gpu_name": gpu,
        "gpu_count": 1 if gpu else 0,
        "gpu_driver": driver,
    }
    llmperf["servers"] = {
        "m": {"backend": "vllm", "engine": "vllm", "engine_version": engine, "model_id": "x/y"}
    }
    llmperf.update(extra)
    return {"node": "ci-1", "llmperf": llmperf}


def test_hardware_check_lists_each_difference() -> None:
    check = check_hardware(
        machine("NVIDIA A100", "550.1", "0.6.3"), machine("NVIDIA H100", "550.1", "0.7.0"), "m", "warn"
    )
    assert check.differences == (
        "gpu_name 'NVIDIA A100' -> 'NVIDIA H100'",
        "m engine_version '0.6.3' -> '0.7.0'",
    )
    assert check.message == (
        "baseline ran on a different setup: gpu_name 'NVIDIA A100' -> 'NVIDIA H100'; "
        "m engine_version '0.6.3' -> '0.7.0'"
    )
    assert not check.fatal
    assert check_hardware(machine(None, None, "1"), machine(None, None, "1"), "m").differences == ()


def test_cpu_is_compared_when_neither_run_had_a_gpu() -> None:
    old, new = machine(None, None, "1"), machine(None, None, "1")
    old["cpu"] = {"brand_raw": "AMD EPYC 7763 64-Core Processor", "count": 4}
    new["cpu"] = {"brand_raw": "Intel(R) Xeon(R) Platinum 8370C CPU @ 2.80GHz", "count": 4}
    assert check_hardware(old, new, "m").differences == (
        "cpu brand_raw 'AMD EPYC 7763 64-Core Processor' -> 'Intel(R) Xeon(R) Platinum 8370C CPU @ 2.80GHz'",
    )
    old["llmperf"]["host"] = {"cpu_model": "AMD EPYC 7763", "cpu_count_logical": 4}
    new["llmperf"]["host"] = {"cpu_model": "AMD EPYC 7763", "cpu_count_logical": 2}
    assert check_hardware(old, new, "m").differences == ("host cpu_count_logical 4 -> 2",)
    gpu_old, gpu_new = machine("NVIDIA H100", "1", "1"), machine("NVIDIA H100", "1", "1")
    gpu_old["cpu"], gpu_new["cpu"] = old["cpu"], new["cpu"]
    assert check_hardware(gpu_old, gpu_new, "m").differences == ()


def test_hardware_check_skips_fields_one_side_did_not_record() -> None:
    old = machine("NVIDIA H100", "550.1", "0.6.3")
    new = machine("NVIDIA H100", "550.1", "0.6.3")
    del new["llmperf"]["gpu_driver"]
    new["llmperf"]["servers"] = {}
    assert check_hardware(old, new, "m").differences == ()
    new["llmperf"]["servers"] = {"m": {"engine_version": "0.7.0"}}
    assert check_hardware(old, new, "m").differences == ("m engine_version '0.6.3' -> '0.7.0'",)
    assert check_hardware({}, new, "m").differences == (
        "baseline has no machine_info.llmperf, so its hardware is unknown",
    )


def test_hardware_mismatch_modes_in_judge() -> None:
    result = run(TTFTS, 14.0)
    base = baseline_of(run(TTFTS, 10.0))
    old, new = machine("NVIDIA A100", "1", "1"), machine("NVIDIA H100", "1", "1")
    fail = judge(result, None, base, hardware=check_hardware(old, new, "m", "fail"))
    assert fail.kind == "invalid"
    assert fail.reasons == ("baseline ran on a different setup: gpu_name 'NVIDIA A100' -> 'NVIDIA H100'",)
    assert fail.comparisons == ()
    warn = judge(result, None, base, hardware=check_hardware(old, new, "m", "warn"))
    assert warn.kind == "fail-regression"
    assert warn.notes == (
        "baseline ran on a different setup: gpu_name 'NVIDIA A100' -> 'NVIDIA H100'",
        ONE_RUN_NOTE,
    )
    ignore = judge(result, None, base, hardware=check_hardware(old, new, "m", "ignore"))
    assert (ignore.kind, ignore.notes) == ("fail-regression", (ONE_RUN_NOTE,))


def test_tolerances_are_percentages_by_metric_or_its_p50() -> None:
    assert Tolerances(0.10, 0.05, 0.05, 0.05, 0.05, 0.01) == DEFAULT_TOLERANCES
    tol = parse_tolerances({"tpot_ms_p50": "3", "ttft_ms": 15, "error_rate": "2%"})
    assert (tol.tpot_ms, tol.ttft_ms, tol.error_rate, tol.itl_ms) == (0.03, 0.15, 0.02, 0.05)
    assert parse_tolerances(["e2e_ms=7.5%"]).e2e_ms == 0.075
    # --llm-adaptive aims at half the tightest decode tolerance.
    assert DEFAULT_TOLERANCES.adaptive_target_rel_ci == 0.025
    assert parse_tolerances({"tpot_ms": 8, "output_tok_per_s": 6}).adaptive_target_rel_ci == pytest.approx(
        0.03
    )


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (
            {"ttft_ms_p95": 5},
            "unknown tolerance key 'ttft_ms_p95'; valid keys are ttft_ms[_p50], tpot_ms[_p50]",
        ),
        ({"tpot_ms": "fast"}, "tolerance tpot_ms is a percentage >= 0, got 'fast'; type e.g. tpot_ms=5"),
        ({"tpot_ms": -1}, "tolerance tpot_ms is a percentage >= 0, got -1"),
        (["tpot_ms"], "tolerance 'tpot_ms' needs METRIC=PERCENT; type e.g. tpot_ms=5"),
    ],
)
def test_tolerance_mistakes(items: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_tolerances(items)
    assert message in str(info.value)


def test_custom_tolerance_lets_a_ten_percent_change_pass() -> None:
    base = baseline_of(run(TTFTS, 10.0))
    outcome = judge(
        run(TTFTS, 11.0), None, base, rules=Rules(parse_tolerances({"tpot_ms": 12, "itl_ms": 12}))
    )
    assert outcome.kind == "pass"

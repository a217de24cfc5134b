"""Capacity and goodput in the gate: what a probe must meet, the floors, and a capacity regression.

Capacity is one number per run; the gate compares it run against run
(``noise.compare_run_figures``): a drop fails when it is larger than the
tolerance (10%), than what unchanged runs have shown (with a history) or
than the one-run floor (25%), and more than one search step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from judge_support import TTFTS, baseline_of, run

from pytest_llmperf.errors import ConfigError
from pytest_llmperf.judge import budgets
from pytest_llmperf.judge.capacity import Capacity, Criterion, Probe, capacity_info
from pytest_llmperf.judge.noise import CaseRun, Correction, compare_run_figures
from pytest_llmperf.judge.verdict import (
    DEFAULT_TOLERANCES,
    Evidence,
    judge,
    parse_tolerances,
    scenario_mismatch,
)
from pytest_llmperf.records import RunResult, Slo
from pytest_llmperf.schema import plan_of, run_figures


def with_capacity(result: RunResult, concurrency: int | None, **more: Any) -> RunResult:
    search = {
        "by": "concurrency",
        "low": 1,
        "high": 32,
        "max_probes": 12,
        "requests": None,
        "rate_step": None,
    }
    capacity = {"search": search, "budget": {"slo_tpot_ms": 50.0}, "concurrency": concurrency, **more}
    return dataclasses.replace(result, extra={**result.extra, "capacity": capacity})


def entry(result: RunResult) -> dict[str, Any]:
    return {**baseline_of(result), **{k: v for k, v in result.extra.items() if k in ("capacity", "sweep")}}


def test_goodput_floors_and_per_request_limits_parse_like_every_budget() -> None:
    layer = budgets.parse_cli(["slo_ttft_ms=500,slo_tpot_ms=40", "slo_attainment_min=0.99,goodput_rps_min=2"])
    assert layer.slo() == Slo(ttft_ms=500, tpot_ms=40)
    with pytest.raises(ConfigError, match="slo_attainment_min in --llm-budget is a fraction between 0 and 1"):
        budgets.parse_cli(["slo_attainment_min=99"])
    with pytest.raises(ConfigError, match=r"did you mean 'slo_tpot_ms'\?"):
        budgets.parse_cli(["slo_tpo_ms=40"])


def test_per_request_limits_fail_nothing_and_the_floors_read_the_goodput() -> None:
    from pytest_llmperf.measure.stats import with_goodput

    result = run(TTFTS, 10.0)
    # TTFT 50..65 ms from when each request was due: 6 of 16 are within 55 ms.
    summary = with_goodput(result.summary, result.records, Slo(ttft_ms=55))
    assert (summary.good_requests, summary.slo_attainment) == (6, 6 / 16)
    limits = budgets.parse_marker((), {"slo_ttft_ms": 55, "slo_attainment_min": 0.9, "goodput_rps_min": 0})
    assert limits.violations(summary) == (
        "6 of 16 requests met the per-request limits (ttft_ms <= 55): slo_attainment 0.375 below budget 0.9 "
        "(marker)",
    )
    assert budgets.parse_marker((), {"slo_ttft_ms": 55}).violations(summary) == ()


def test_capacity_floors_apply_to_capacity_tests_only() -> None:
    floor = budgets.parse_marker((), {"capacity_concurrency_min": 4})
    summary = run(TTFTS, 10.0).summary
    assert floor.violations(summary) == ()  # a plain run has no capacity to floor
    assert floor.violations(summary, {"capacity_concurrency": 3.0}) == (
        "capacity_concurrency = 3 below budget 4 (marker)",
    )
    assert floor.violations(summary, {}) == (
        "capacity_concurrency not measured (the search found no load that meets the budget); "
        "budget 4 (marker)",
    )
    outcome = judge(with_capacity(run(TTFTS, 10.0), 3), floor)
    assert outcome.kind == "fail-budget"


def test_a_probe_meets_the_criterion_only_when_valid_within_budget_and_attaining_the_slo() -> None:
    from pytest_llmperf.measure.stats import with_goodput

    limits = budgets.parse_marker((), {"slo_ttft_ms": 60, "capacity_concurrency_min": 8, "ttft_ms_p50": 100})
    criterion = Criterion.of(limits, slo_attainment=0.5)
    assert criterion.budgets.get("capacity_concurrency_min") is None  # a probe is not judged on the floor
    result = run(TTFTS, 10.0)
    good = dataclasses.replace(result, summary=with_goodput(result.summary, result.records, limits.slo()))
    assert criterion.misses(good) == ()  # 11 of 16 within 60 ms (50..60): 69% >= 50%
    strict = Criterion.of(limits, slo_attainment=0.9)
    assert strict.misses(good) == ("SLO attainment 68.8% < 90% (11 of 16 good)",)
    assert (
        Criterion.of(budgets.parse_marker((), {"ttft_ms_p50": 10})).misses(good)[0].startswith("ttft_ms p50")
    )
    invalid = dataclasses.replace(good, invalid=("invalid measurement: client saturated",))
    assert Criterion.of(limits, 0.5).misses(invalid) == ("invalid measurement: client saturated",)
    # Without per-request limits there is no attainment to reach.
    assert Criterion.of(budgets.parse_marker((), {"ttft_ms_p50": 100})).slo_attainment is None


def test_the_capacity_record_holds_the_answer_every_probe_and_the_point_shown() -> None:
    result = run(TTFTS, 10.0)
    probes = (
        Probe(1, True, (result, ())),
        Probe(2, True, (result, ())),
        Probe(4, False, (result, ("slow",))),
        Probe(3, True, (result, ())),
    )
    found = Capacity(3, 4, True, probes)
    info = capacity_info(
        search={"by": "concurrency"}, criterion=Criterion.of(budgets.parse_marker((), {"slo_tpot_ms": 20})),
        by_concurrency=found, by_rate=None, rate_step=None, where={"precision": "q4_k_m", "machine": "cpu"},
    )  # fmt: skip
    assert (info["concurrency"], info["concurrency_first_miss"], info["concurrency_converged"]) == (
        3,
        4,
        True,
    )
    assert [(p["met"], p["reasons"]) for p in info["probes"]] == [(True, []), (True, []), (False, ["slow"]),
                                                                  (True, [])]  # fmt: skip
    assert info["slo"] == {"tpot_ms": 20.0}
    assert info["slo_attainment_min"] == 0.99
    assert info["at_capacity"]["ttft_ms"]["p50"] == 58.0
    assert (info["precision"], info["machine"], info["rate"], info["rate_step"]) == (
        "q4_k_m",
        "cpu",
        None,
        None,
    )
    assert run_figures(info | {}) == {}  # figures are read from the entry, which holds "capacity"
    assert run_figures({"capacity": info}) == {"capacity_concurrency": (3.0, 1.0)}


def figures(*values: float, metric: str = "capacity_concurrency", step: float = 1.0) -> list[CaseRun]:
    return [CaseRun((), 1, 0.0, {metric: (v, step)}) for v in values]


def test_a_capacity_drop_of_one_step_is_the_searchs_resolution_not_a_regression() -> None:
    (one,) = compare_run_figures(figures(8), figures(7)[0], DEFAULT_TOLERANCES, Correction(5))
    assert (one.change, one.regressed) == (pytest.approx(-0.125), False)  # -12.5%: one step, never fails
    # One run: the floor is 25% worse in log terms, a drop of 1 - 1/1.25 = 20%.
    (two,) = compare_run_figures(figures(10), figures(9)[0], DEFAULT_TOLERANCES, Correction(5))
    assert two.regressed is False  # -10%: within the floor (and one step)
    (three,) = compare_run_figures(figures(8), figures(6)[0], DEFAULT_TOLERANCES, Correction(5))
    assert three.regressed is True
    assert three.reason() == (
        "capacity_concurrency 8 -> 6 (-25.0% vs 1 baseline run; the bar is -20.0%, tolerance -10%, and more "
        "than one search step)"
    )
    (up,) = compare_run_figures(figures(8), figures(12)[0], DEFAULT_TOLERANCES, Correction(5))
    assert up.regressed is False


def test_with_a_history_the_bar_is_what_unchanged_runs_showed() -> None:
    steady = figures(8, 8, 8, 8)
    (drop,) = compare_run_figures(steady, figures(6)[0], DEFAULT_TOLERANCES, Correction(5))
    assert drop.regressed is True
    assert drop.method == "figure"
    assert drop.runs == 4
    noisy = figures(8, 5, 8, 5)
    (same,) = compare_run_figures(noisy, figures(5)[0], DEFAULT_TOLERANCES, Correction(5))
    assert same.regressed is False  # 5 is what this history already shows
    loose = parse_tolerances(["capacity=50"])
    (tolerated,) = compare_run_figures(steady, figures(5)[0], loose, Correction(5))
    assert tolerated.regressed is False


def test_the_gate_compares_a_capacity_test_on_its_capacity_not_on_its_moving_point() -> None:
    then = with_capacity(run(TTFTS, 10.0, concurrency=8), 8)
    slower = with_capacity(run([2 * t for t in TTFTS], 10.0, concurrency=4), 4)
    # The answer (and so the scenario's concurrency) moved: still the same case.
    assert scenario_mismatch(entry(then), slower) is None
    outcome = judge(slower, None, Evidence.single(entry(then)))
    assert outcome.kind == "fail-regression"
    assert [c.metric for c in outcome.comparisons] == ["capacity_concurrency", "error_rate"]
    assert outcome.reasons[0].startswith("capacity_concurrency 8 -> 4 (-50.0% vs 1 baseline run")
    same = with_capacity(run(TTFTS, 10.0, concurrency=8), 8)
    assert judge(same, None, Evidence.single(entry(then))).kind == "pass"


def test_another_search_or_traffic_is_another_case() -> None:
    then = with_capacity(run(TTFTS, 10.0), 8)
    other = dataclasses.replace(
        then,
        extra={"capacity": {**then.extra["capacity"], "search": {"by": "concurrency", "high": 64}}},  # type: ignore[dict-item]
    )
    assert scenario_mismatch(entry(then), other) is not None
    traffic = dataclasses.replace(
        run(TTFTS, 10.0), extra={"traffic": {"input": {"kind": "uniform"}, "seed": 1}}
    )
    assert "traffic" in (scenario_mismatch(baseline_of(run(TTFTS, 10.0)), traffic) or "")
    assert plan_of(entry(then)) == {"capacity": then.extra["capacity"]["search"]}  # type: ignore[index]

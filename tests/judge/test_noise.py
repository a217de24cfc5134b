"""The noise model: waves, one-run floors, history bounds, repeats and the session's Bonferroni rule.

Exact numbers: run figures are built so that every request of a run has the
same value, so each run's figure is known and the bounds can be worked out
by hand (the comments do it).
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from pytest_llmperf.judge.noise import (
    ONE_RUN_FLOOR,
    CaseRun,
    Correction,
    compare_case,
    compare_history,
    compare_repeats,
    compare_samples,
    history_spread,
    sample_size_notes,
    shift_ci,
)
from pytest_llmperf.judge.verdict import DEFAULT_TOLERANCES, Evidence, judge
from pytest_llmperf.measure.stats import effective_samples, t_quantile
from pytest_llmperf.records import RequestRecord, RunResult, Scenario, Summary

MS = 1_000_000


def entry(
    tpot_ms: float, n: int = 8, *, spread: float = 0.0, duration_s: float | None = None
) -> dict[str, Any]:
    """A saved ``extra_info["llm"]`` of n requests at concurrency 1 whose TPOT is ``tpot_ms`` (+- spread)."""
    tpot = [tpot_ms * (1 + spread * ((i % 3) - 1)) for i in range(n)]
    e2e = [100 + 31 * t for t in tpot]
    return {
        "model": "m",
        "backend": "llamacpp",
        "input_tokens": 8,
        "output_tokens": 32,
        "concurrency": 1,
        "error_rate": 0.0,
        "outcome": "pass",
        "duration_s": sum(e2e) / 1000 if duration_s is None else duration_s,
        "samples": {"ttft_ms": [100.0] * n, "tpot_ms": tpot, "itl_ms": tpot, "e2e_ms": e2e,
                    "output_tok_per_s": [32 / (e / 1000) for e in e2e]},
    }  # fmt: skip


def case(*tpots: float, **kwargs: Any) -> CaseRun:
    return CaseRun.from_entries([entry(t, **kwargs) for t in tpots])


def test_effective_samples_count_waves_not_requests() -> None:
    assert effective_samples(8, 8 * 0.5, 0.5) == 8  # concurrency 1: one after the other
    assert effective_samples(10, 3 * 2.0, 2.0) == 3  # concurrency 4: waves of 4, 4 and 2
    assert effective_samples(10, 100.0, 0.5) == 10  # a slow open-loop rate: never more than n
    assert effective_samples(10, 0.5, 2.0) == 1  # all at once
    assert effective_samples(10, 5.0, None) == 10  # E2E unknown: as many as there are
    assert effective_samples(0, 5.0, 1.0) == 0


def test_waves_widen_the_rank_interval_to_what_independent_samples_support() -> None:
    base = [10.0 + 0.1 * i for i in range(10)]
    now = [v * 1.3 for v in base]
    every_request = shift_ci(base, now)
    in_waves = shift_ci(base, now, waves=(3, 3))
    assert every_request is not None
    assert in_waves is not None
    assert every_request.low > 1.0  # ten against ten: certain
    assert (in_waves.low, in_waves.high) == (0.0, math.inf)  # three against three cannot bound it
    assert in_waves.ratio == every_request.ratio == pytest.approx(1.3)


def test_a_closed_loop_run_in_three_waves_counts_as_three_samples() -> None:
    def wave_run(itl_ms: float) -> RunResult:
        # Concurrency 4, 10 requests: waves start at 0, E and 2E, every request takes E.
        e2e_ms = 100 + 31 * itl_ms
        records = []
        for i in range(10):
            sent = round((i // 4) * e2e_ms * MS)
            chunks = tuple(sent + round((100 + k * itl_ms) * MS) for k in range(32))
            records.append(
                RequestRecord(f"r{i}", "s", 8, 32, sent, sent, chunks[-1], chunks, (1,) * 32, "usage", 8, 32)
            )
        summary = Summary(10, 10, 0, 3 * e2e_ms / 1000, *([None] * 8), 0.0, 8.0, 32.0, 0)
        return RunResult("m", "llamacpp", Scenario(8, 32, 4, 10), tuple(records), summary)

    base, slow = wave_run(10.0), wave_run(13.0)
    current = CaseRun.from_results([slow])
    assert current.waves == 3
    baseline = {**entry(10.0), "concurrency": 4, "duration_s": base.summary.duration_s}
    baseline["samples"] = {k: list(v) for k, v in CaseRun.from_results([base]).repeats[0].items()}
    outcome = judge(slow, None, baseline)
    tpot = next(c for c in outcome.comparisons if c.metric == "tpot_ms")
    assert tpot.change == pytest.approx(0.3)
    assert tpot.waves == (3, 3)
    assert not tpot.regressed  # +30% is above the bar, but 3 waves against 3 cannot show it
    assert outcome.kind == "pass"
    assert outcome.notes[1].startswith(
        "sample too small for the tolerance (3/3 independent samples): 95% CI ttft_ms unbounded, "
        "tpot_ms unbounded"
    )


def test_one_run_bar_is_the_floor_or_the_tolerance_if_larger() -> None:
    base, now = case(10.0), case(12.0)
    cmp = compare_samples("tpot_ms", base, now, 0.05)
    assert cmp is not None
    assert (cmp.bar, cmp.regressed) == (ONE_RUN_FLOOR, False)  # +20% is certain but under 25%
    loose = compare_samples("tpot_ms", base, case(13.0), 0.40)
    assert loose is not None
    assert (loose.bar, loose.regressed) == (pytest.approx(0.40), False)
    slower = compare_samples("tpot_ms", base, case(13.0), 0.05)
    assert slower is not None
    assert slower.regressed  # +30% > 25%, and 8 against 8 requests bound it
    # Throughput gets the same bar in logs: 1/1.25 - 1 = -20%. E2E = 100 + 31 TPOT: 410 -> 503 ms is
    # -18.5% per-request tok/s (passes), 410 -> 565 ms is -27.4% (fails).
    tput = compare_samples("output_tok_per_s", base, case(13.0), 0.05)
    worse = compare_samples("output_tok_per_s", base, case(15.0), 0.05)
    assert tput is not None
    assert worse is not None
    assert (tput.bar, tput.regressed, worse.regressed) == (pytest.approx(-0.2), False, True)


def test_history_bound_worked_by_hand() -> None:
    history = [case(t) for t in (10.0, 10.5, 11.0, 10.0, 10.5)]
    # Pairwise |log differences|: 0, 0, log(1.1/1.05) x2, log(1.05) x4, log(1.1) x2; their median is
    # log(1.05), so sigma = log(1.05) / (0.67449 * sqrt(2)). With m = 5 comparisons, alpha 0.05:
    # q = t_4(0.99) = 3.747; the bound is q * sigma * sqrt(1 + pi / (2 * 5)) around the median 10.5.
    sigma = math.log(1.05) / (0.6744897501960817 * math.sqrt(2))
    bound = t_quantile(0.99, 4) * sigma * math.sqrt(1 + math.pi / 10)
    assert t_quantile(0.99, 4) == pytest.approx(3.747, abs=5e-4)
    passing = compare_history("tpot_ms", history, case(12.0), 0.05, None, correction=Correction(5))
    failing = compare_history("tpot_ms", history, case(13.5), 0.05, None, correction=Correction(5))
    assert passing is not None
    assert failing is not None
    assert passing.baseline == pytest.approx(10.5)
    assert passing.bar == pytest.approx(math.expm1(bound))  # +24.6%
    assert passing.spread == pytest.approx(math.expm1(sigma))
    assert (passing.runs, passing.method) == (5, "history")
    assert (round(passing.change, 4), passing.regressed) == (round(12 / 10.5 - 1, 4), False)
    assert (round(failing.change, 4), failing.regressed) == (round(13.5 / 10.5 - 1, 4), True)


def test_a_steady_history_lets_the_tolerance_decide() -> None:
    history = [case(t) for t in (10.0, 10.02, 10.01, 9.99, 10.0)]
    cmp = compare_history("tpot_ms", history, case(11.0), 0.05, None, correction=Correction(5))
    assert cmp is not None
    assert cmp.bar == pytest.approx(0.05)  # the bound (+0.4%) is under the tolerance
    assert cmp.regressed


def test_more_comparisons_in_a_session_raise_the_bar() -> None:
    history = [case(t) for t in (10.0, 10.5, 11.0, 10.0, 10.5)]
    few = compare_history("tpot_ms", history, case(12.0), 0.05, None, correction=Correction(5))
    many = compare_history("tpot_ms", history, case(12.0), 0.05, None, correction=Correction(75))
    assert few is not None
    assert many is not None
    assert many.bar is not None
    assert few.bar is not None
    assert many.bar > few.bar  # alpha / 75 per comparison: t_4(0.99933) instead of t_4(0.99)


def test_pooled_spread_of_other_cases_and_a_noisier_case_keeps_its_own() -> None:
    quiet = [[case(t) for t in (20.0, 20.1, 19.9)] for _ in range(5)]
    pooled = history_spread(quiet, "tpot_ms")
    assert pooled is not None
    assert pooled[1] == 10  # 5 cases x (3 - 1)
    noisy = [case(t) for t in (10.0, 12.0, 14.0)]
    cmp = compare_history("tpot_ms", noisy, case(15.0), 0.05, pooled, correction=Correction(5))
    assert cmp is not None
    # Its own spread (median |log diff| = log(1.2)) is far above the pooled one: it is kept.
    assert cmp.spread == pytest.approx(math.expm1(math.log(1.2) / (0.6744897501960817 * math.sqrt(2))))
    assert not cmp.regressed


def test_repeats_give_a_t_interval_on_repeat_medians() -> None:
    base = case(10.0, 10.2, 9.8)
    now = case(13.0, 13.2, 12.8)
    cmp = compare_repeats("tpot_ms", base, now, 0.05, None)
    assert cmp is not None
    assert cmp.method == "repeats"
    assert (cmp.n_baseline, cmp.n_current) == (3, 3)
    mean_log = sum(map(math.log, (13.0, 13.2, 12.8))) / 3 - sum(map(math.log, (10.0, 10.2, 9.8))) / 3
    assert cmp.change == pytest.approx(math.expm1(mean_log))
    assert 0 < cmp.low < cmp.change < cmp.high  # t_4(0.975) x the pooled sd of 3 + 3 repeats
    assert cmp.regressed  # +30%: over the one-run bar of 25%, and the interval excludes no change
    assert compare_repeats("tpot_ms", case(10.0), now, 0.05, None) is None  # one repeat: not this test


def test_compare_case_picks_the_method_by_what_the_baseline_has() -> None:
    one = compare_case([case(10.0)], case(10.0), DEFAULT_TOLERANCES)
    reps = compare_case([case(10.0, 10.1)], case(10.0, 10.1), DEFAULT_TOLERANCES)
    hist = compare_case([case(10.0), case(10.1)], case(10.0), DEFAULT_TOLERANCES)
    assert {c.method for c in one} == {"samples", "absolute"}
    assert {c.method for c in reps} == {"repeats", "absolute"}
    assert {c.method for c in hist} == {"history", "absolute"}
    assert [c.metric for c in hist] == [
        "ttft_ms",
        "tpot_ms",
        "e2e_ms",
        "itl_ms",
        "output_tok_per_s",
        "error_rate",
    ]


def test_history_evidence_through_judge_names_the_runs() -> None:
    history = tuple(case(t) for t in (10.0, 10.5, 11.0, 10.0, 10.5))
    newest = entry(10.0)
    slow = CaseRun.from_entries([entry(14.0)])
    records = (RequestRecord("r", "s", 8, 32, 0, 0, 1, (0,), (1,), "usage", 8, 32),)
    summary = Summary(1, 1, 0, 1.0, *([None] * 8), 0.0, 8.0, 32.0, 0)
    result = RunResult("m", "llamacpp", Scenario(8, 32), records, summary)
    outcome = judge(result, None, Evidence(history, newest, comparisons=5), current=slow)
    assert outcome.kind == "fail-regression"
    assert outcome.reasons[0].startswith(
        "tpot_ms +33.3% vs 5 baseline runs (unchanged runs here vary +-5.2%, so the bar is +24.6%"
    )


def test_sample_size_notes_say_what_would_resolve_the_tolerance() -> None:
    cmps = compare_case([case(10.0, n=4, spread=0.1)], case(10.0, n=4, spread=0.1), DEFAULT_TOLERANCES)
    assert sample_size_notes(cmps) == (
        # 4 against 4 requests varying +-10%: k = floor(8 - 1.96 * sqrt(16 * 9 / 12)) = 1, the widest.
        "sample too small for the tolerance (4/4 independent samples): 95% CI tpot_ms +-20%, e2e_ms +-15%, "
        "itl_ms +-20%, output_tok_per_s +-15%; send more requests (--llm-adaptive stops at half the "
        "tolerance), use --llm-repeat, or keep a history of passing runs (--benchmark-autosave)",
    )
    noisy = compare_case([case(t) for t in (10.0, 12.0, 14.0)], case(12.0), DEFAULT_TOLERANCES)
    notes = sample_size_notes(noisy)
    assert len(notes) == 1
    assert notes[0].startswith(
        "unchanged runs on this machine vary more than the tolerance, so a change must exceed: "
    )
    assert "tpot_ms +" in notes[0]


def test_a_candidate_noisier_inside_than_its_history_gets_a_wider_bound() -> None:
    history = [case(t, spread=0.01) for t in (10.0, 10.05, 10.0, 9.95, 10.0)]
    tight = compare_history("tpot_ms", history, case(11.5, spread=0.01), 0.05, None, correction=Correction(5))
    # Requests at 0.7x, 1x and 1.3x of 11.5 ms: the same median, but 8 such requests pin it to about
    # +-17% (1.2533 x 1.4826 x MAD log(1.3) / sqrt(8)), so +15% is no longer beyond the bound.
    loose = compare_history("tpot_ms", history, case(11.5, spread=0.3), 0.05, None, correction=Correction(5))
    assert tight is not None
    assert loose is not None
    assert tight.change == pytest.approx(loose.change) == pytest.approx(0.15)
    assert (tight.bar, tight.regressed) == (pytest.approx(0.05), True)
    assert loose.bar is not None
    assert loose.bar > 0.5
    assert not loose.regressed

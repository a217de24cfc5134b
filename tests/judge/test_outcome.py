"""The final outcome: the measured verdict folded with what pytest reported, case by case."""

from __future__ import annotations

from typing import get_args

from pytest_llmperf.judge.outcome import Phase, final_outcome
from pytest_llmperf.records import PYTEST_WORDS, Outcome, OutcomeKind

PASS = Outcome("pass", (), ("a note",))
BUDGET = Outcome("fail-budget", ("ttft_ms p95 = 812 ms exceeds budget 500 ms (marker)",))
OK = Phase("setup", "passed")
DONE = Phase("teardown", "passed")


def test_a_passed_test_keeps_its_verdict() -> None:
    assert final_outcome(PASS, [OK, Phase("call", "passed"), DONE]) == PASS
    assert final_outcome(None, [OK, Phase("call", "passed"), DONE]) == Outcome("pass")


def test_the_verdict_failing_the_test_is_the_outcome() -> None:
    phases = [OK, Phase("call", "failed", "fail-budget: ttft_ms p95 = 812 ms", verdict=True), DONE]
    assert final_outcome(BUDGET, phases) == BUDGET


def test_the_body_failing_after_a_good_measurement_is_a_fail() -> None:
    phases = [OK, Phase("call", "failed", "AssertionError: assert 4 == 99"), DONE]
    assert final_outcome(PASS, phases) == Outcome("fail", ("AssertionError: assert 4 == 99",), ("a note",))


def test_the_body_failing_after_a_missed_budget_keeps_both_reasons() -> None:
    phases = [OK, Phase("call", "failed", "llama-server for m (pid 7) exited with code -9 (log x)"), DONE]
    assert final_outcome(BUDGET, phases).reasons == (
        "llama-server for m (pid 7) exited with code -9 (log x)",
        "fail-budget: ttft_ms p95 = 812 ms exceeds budget 500 ms (marker)",
    )
    assert final_outcome(BUDGET, phases).kind == "fail"


def test_setup_and_teardown_failures_are_errors() -> None:
    assert final_outcome(None, [Phase("setup", "failed", "could not start"), DONE]) == Outcome(
        "error", ("could not start",)
    )
    torn = final_outcome(PASS, [OK, Phase("call", "passed"), Phase("teardown", "failed", "boom")])
    assert (torn.kind, torn.reasons) == ("error", ("boom",))


def test_a_skip_is_a_skip() -> None:
    assert final_outcome(None, [Phase("setup", "skipped", "does not fit"), DONE]) == Outcome(
        "skip", ("does not fit",)
    )


def test_every_kind_has_the_word_pytest_counts_it_under() -> None:
    assert set(PYTEST_WORDS) == set(get_args(OutcomeKind))
    assert set(PYTEST_WORDS.values()) == {"passed", "failed", "invalid", "error", "skipped"}

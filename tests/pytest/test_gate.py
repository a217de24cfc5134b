"""The gate's pytest glue that needs no session: the session's tally of pytest's outcomes."""

from __future__ import annotations

import pytest

from pytest_llmperf.pytest.gate import SessionTally


def report(nodeid: str, when: str, outcome: str, invalid: bool = False) -> pytest.TestReport:
    rep = pytest.TestReport(nodeid, ("t.py", 1, "x"), {}, outcome, None, when)  # type: ignore[arg-type]
    if invalid:
        rep.llmperf_invalid = True  # type: ignore[attr-defined]
    return rep


def test_the_tally_counts_pytests_outcomes_for_the_mark() -> None:
    tally = SessionTally()
    for rep in (
        report("a", "call", "passed"),
        report("b", "call", "failed"),
        report("c", "setup", "failed"),
        report("d", "call", "failed", invalid=True),
        report("b", "teardown", "passed"),
    ):
        tally.pytest_runtest_logreport(rep)
    assert tally.mark() == {
        "schema": 1, "passed": False, "failed": 1, "errors": 1, "invalid": 1, "interrupted": False,
    }  # fmt: skip
    clean = SessionTally()
    clean.pytest_runtest_logreport(report("a", "call", "passed"))
    assert clean.mark()["passed"]
    clean.pytest_keyboard_interrupt()
    assert clean.mark() == {
        "schema": 1, "passed": False, "failed": 0, "errors": 0, "invalid": 0, "interrupted": True,
    }  # fmt: skip

"""The gate's pytest glue that needs no session: which case a repeat measures, and the session's tally."""

from __future__ import annotations

import pytest

from pytest_llmperf.judge.gate import SessionTally, case_of, repeat_id


@pytest.mark.parametrize(
    ("nodeid", "repeat", "case"),
    [
        ("t.py::test_x[gemma3-270m-repeat2-4]", 2, "t.py::test_x[gemma3-270m-4]"),
        ("t.py::test_x[gemma3-270m-repeat12]", 12, "t.py::test_x[gemma3-270m]"),
        ("t.py::test_x[repeat1-gemma3-270m]", 1, "t.py::test_x[gemma3-270m]"),
        ("t.py::test_x[repeat3]", 3, "t.py::test_x"),
        # repeat1 must not match inside repeat12, nor a model that happens to contain the word.
        ("t.py::test_x[my-repeat1x-repeat1]", 1, "t.py::test_x[my-repeat1x]"),
        ("t.py::test_x[gemma3-270m-4]", None, "t.py::test_x[gemma3-270m-4]"),
    ],
)
def test_the_case_of_a_repeat_is_its_id_without_the_repeat(
    nodeid: str, repeat: int | None, case: str
) -> None:
    assert case_of(nodeid, repeat) == case
    assert repeat_id(2) == "repeat2"


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

"""A test's final outcome: its measured verdict, and what pytest saw, as one ``Outcome``.

pytest knows how a test ended only once its reports are made: the body's own
``assert`` may fail after a good measurement, the run may raise (a server that
died, an impossible argument), setup or teardown may error. Every artifact
(JSON entry, JSONL, terminal table, Markdown, JUnit) carries the one outcome
this module folds from the measured verdict (``verdict.judge``) and those
reports, so that none of them says "pass" for a test pytest failed:

* ``skip``: pytest skipped the test (a model that does not fit this machine);
* ``error``: setup or teardown failed, and pytest reports an error;
* ``fail-budget``, ``fail-regression``, ``invalid``: the measured verdict, when
  that verdict is why pytest failed the test;
* ``fail``: pytest failed the test for another reason; the first reason is
  pytest's own line, then the measured verdict's reasons if it was no pass;
* ``pass``: pytest passed it (and so did the verdict, or nothing was measured).

The kinds map onto pytest's counts (``records.PYTEST_WORDS``: passed,
failed, invalid, error, skipped), so a report's summary line can equal pytest's.
Pure: no pytest, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pytest_llmperf.records import Outcome, OutcomeKind


@dataclass(frozen=True)
class Phase:
    """One pytest report of a test: the phase, pytest's outcome and its one-line reason.

    ``verdict`` is true when the failure is the measured verdict failing the
    test (the plugin's check after the body returned), not something else.
    """

    when: Literal["setup", "call", "teardown"]
    outcome: Literal["passed", "failed", "skipped"]
    reason: str = ""
    verdict: bool = False


def _with(kind: OutcomeKind, first: str, before: Outcome) -> Outcome:
    """``kind`` with ``first`` as its lead reason, keeping what ``before`` said if it was no pass."""
    kept = tuple(f"{before.kind}: {reason}" for reason in before.reasons) if before.kind != "pass" else ()
    reasons = (first, *kept) if first else kept
    return Outcome(kind, reasons, before.notes, before.comparisons)


def final_outcome(measured: Outcome | None, phases: Sequence[Phase]) -> Outcome:
    """Fold a test's measured verdict (``None``: it measured nothing) and its reports, in order."""
    result = measured if measured is not None else Outcome("pass")
    for phase in phases:
        if phase.outcome == "passed":
            continue
        if phase.outcome == "skipped":
            return Outcome("skip", (phase.reason,) if phase.reason else ())
        if phase.when == "call":
            result = (
                result if phase.verdict and result.kind != "pass" else _with("fail", phase.reason, result)
            )
        else:
            result = _with("error", phase.reason, result)
    return result

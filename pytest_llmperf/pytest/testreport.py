"""Each ``llm_perf`` test's outcome as pytest reported it, written into every artifact.

pytest knows how a test ended only when it makes its reports. ``TestReports``
follows them: it keeps what a test measured, turns an ``LlmPerfError`` into a
failure without a traceback (a server's failure in full once, then one line
per later test of its model), folds the measured verdict and the reports into
the final outcome (``judge.outcome.final_outcome``) at teardown, and writes
that outcome into the benchmark entry's ``extra_info["llm"]``, the JSONL's
last line, the JUnit properties, and the rows of the terminal table and the
Markdown report. Every text it writes is scrubbed of the session's secrets.

This module is the session's pytest glue for one test; it must not measure,
judge a measurement or start anything.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import pytest

from pytest_llmperf.config import Settings
from pytest_llmperf.errors import LlmPerfError, ServerDiedError
from pytest_llmperf.judge.outcome import Phase, final_outcome
from pytest_llmperf.output import report as reports
from pytest_llmperf.output.requestlog import RequestLog
from pytest_llmperf.records import CaseResult, Outcome
from pytest_llmperf.schema import LlmInfo

_OURS = ("llm_outcome", "llm_reason")


@dataclass
class TestState:
    """What one test measured and what pytest reported of it so far."""

    __test__ = False  # not a pytest test class, despite the name

    cases: list[CaseResult] = field(default_factory=list)
    infos: list[LlmInfo] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)
    enforced: bool = False


@dataclass(frozen=True)
class Finished:
    """One ``llm_perf`` test once pytest reported it: ``case`` carries the final outcome."""

    nodeid: str
    model: str
    backend: str
    case: CaseResult | None
    outcome: Outcome

    def row(self) -> reports.ReportRow:
        if self.case is None:
            return reports.ReportRow.unmeasured(self.nodeid, self.model, self.backend, self.outcome)
        return reports.ReportRow.from_result(self.nodeid, self.case.run, self.outcome)


_STATE = pytest.StashKey[TestState]()


def _model(item: pytest.Item) -> str:
    params = getattr(getattr(item, "callspec", None), "params", {})
    return str(params.get("llm_model", ""))


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


class TestReports:
    """The session's view of its ``llm_perf`` tests; ``label(model)`` names a model's server."""

    __test__ = False

    def __init__(self, label: Callable[[str], str], settings: Settings) -> None:
        self._label = label
        self._settings = settings
        self._redactions = settings.redactions
        self.finished: list[Finished] = []
        self.notes: list[str] = []
        """Lines for the end of the session (no plots, nothing saved)."""
        self._shown: dict[tuple[str, str], tuple[str, str]] = {}

    @staticmethod
    def state(item: pytest.Item) -> TestState:
        return item.stash.setdefault(_STATE, TestState())

    def scrub(self, text: str) -> str:
        for secret, placeholder in self._redactions:
            text = text.replace(secret, placeholder)
        return text

    def measured(self, item: pytest.Item, case: CaseResult, info: LlmInfo) -> None:
        state = self.state(item)
        state.cases.append(case)
        state.infos.append(info)

    # -- failures without tracebacks ----------------------------------------------------------

    def failure(self, item: pytest.Item, exc: LlmPerfError, when: str) -> BaseException:
        """``pytest.fail(..., pytrace=False)`` for an ``LlmPerfError`` raised in ``when``.

        A server's failure (several lines: the reason and its log tail) is
        shown whole the first time; a later test of the same model that meets
        the same failure says so in one line that points at the first.
        """
        text, model = self.scrub(str(exc)), _model(item)
        key = (model, text)
        if when == "setup" or "\n" in text:
            first = self._shown.setdefault(key, (item.nodeid, when))
            if first[0] != item.nodeid:
                verb = "died" if isinstance(exc, ServerDiedError) else "could not start"
                noun = "failure" if first[1] == "call" else "error"
                text = (
                    f"{self._label(model)} for {model} {verb}; its reason and log are in the {noun} "
                    f"of {first[0]} above"
                )
        return pytest.fail.Exception(text, pytrace=False)

    def redact(self, report: pytest.TestReport) -> None:
        """Blank secrets out of a report: with ``-l`` a traceback shows every frame's locals,
        and some frames hold the ``Authorization`` header in a plain dict."""
        if not self._redactions:
            return
        if report.longrepr is not None:
            text = str(report.longrepr)
            if self.scrub(text) != text:
                report.longrepr = self.scrub(text)
        report.sections = [(name, self.scrub(text)) for name, text in report.sections]

    # -- the final outcome --------------------------------------------------------------------

    def on_report(self, item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport) -> None:
        if "llm_perf" not in getattr(item, "fixturenames", ()):
            return
        state = self.state(item)
        when: Literal["setup", "call", "teardown"] = report.when
        outcome: Literal["passed", "failed", "skipped"] = report.outcome
        reason = self._reason(call, report) if outcome != "passed" else ""
        state.phases.append(Phase(when, outcome, reason, verdict=when == "call" and state.enforced))
        if when == "call" and report.failed:
            # pytest's word for the test is the outcome every artifact gets: "invalid" only when
            # the invalid verdict is why it failed, not when the run failed in another way too.
            measured = state.cases[-1].outcome if state.cases else None
            if final_outcome(measured, state.phases).kind == "invalid":
                report.llmperf_invalid = True  # type: ignore[attr-defined]
        if when == "teardown":
            self._finish(item, report, state)

    def _reason(self, call: pytest.CallInfo[None], report: pytest.TestReport) -> str:
        if call.excinfo is None:
            longrepr = report.longrepr
            return str(longrepr[2]) if isinstance(longrepr, tuple) else _first_line(str(longrepr or ""))
        exc = call.excinfo.value
        if isinstance(exc, (pytest.fail.Exception, pytest.skip.Exception)):
            text = exc.msg or ""
        elif isinstance(exc, LlmPerfError):
            text = str(exc)
        else:
            text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if isinstance(exc, pytest.skip.Exception) and isinstance(report.longrepr, tuple):
            text = str(report.longrepr[2])
        return self.scrub(_first_line(text))

    def _finish(self, item: pytest.Item, report: pytest.TestReport, state: TestState) -> None:
        measured = state.cases[-1].outcome if state.cases else None
        outcome = final_outcome(measured, state.phases)
        outcome = replace(outcome, reasons=tuple(self.scrub(r) for r in outcome.reasons))
        case = replace(state.cases[-1], outcome=outcome) if state.cases else None
        model = _model(item)
        backend = case.run.backend if case is not None else self._settings.backend or ""
        self.finished.append(Finished(item.nodeid, model, backend, case, outcome))
        for info in state.infos:  # the dict pytest-benchmark saves at the end of the session
            info["outcome"] = outcome.kind
            info["reasons"] = list(outcome.reasons)
        if case is not None and self._settings.save_requests is not None:
            line = {
                "model": model,
                "backend": backend,
                "outcome": outcome.kind,
                "reasons": list(outcome.reasons),
            }
            RequestLog.write_outcome(self._settings.save_requests, item.nodeid, line)
        properties = [p for p in item.user_properties if p[0] not in _OURS]
        properties.append(("llm_outcome", outcome.kind))
        properties += [("llm_reason", reason) for reason in outcome.reasons]
        item.user_properties[:] = properties
        report.user_properties = list(properties)  # junitxml reads the teardown report's

    # -- end of session -------------------------------------------------------------------------

    def write_line(self, config: pytest.Config, line: str) -> None:
        """A line on the terminal, even under capture (progress of a build, a restart)."""
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        capture = config.pluginmanager.get_plugin("capturemanager")
        cm = capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()
        with cm:
            if reporter is not None:
                reporter.write_line(self.scrub(line))
            else:
                print(self.scrub(line), file=sys.stderr)

    def rows(self) -> list[reports.ReportRow]:
        return [f.row() for f in self.finished]

    def terminal_summary(self, reporter: Any, warnings: list[str]) -> None:
        if not self.finished and not self.notes:
            return
        reporter.write_sep("-", "llmperf summary")
        if self.finished:
            reporter.write_line(self.scrub(reports.terminal_table(self.rows())))
        # What the verdicts noticed without deciding on it (one baseline run, too few samples, ...).
        for done in self.finished:
            for note in done.outcome.notes:
                reporter.write_line(self.scrub(f"note: {done.nodeid}: {note}"))
        for warning in warnings:
            reporter.write_line(f"warning: {warning}", yellow=True)
        for note in self.notes:
            reporter.write_line(note)

    def write_report(self, directory: Path, progress: Callable[[str], None]) -> None:
        """``--llm-report``: the Markdown summary, and the plots where matplotlib is installed."""
        if not self.finished:
            return
        try:
            reports.write_markdown(directory, self.rows())
            measured = [f.row() for f in self.finished if f.case is not None]
            if not reports.plots_available():
                self.notes.append(
                    f"no plots in {directory}: matplotlib is not installed; {reports.PLOTS_HINT} to get them"
                )
            elif measured:
                reports.write_plots(directory, measured)
        except (OSError, LlmPerfError) as exc:
            progress(f"could not write the report into {directory}: {exc}")

"""Per-test gating, the pytest half: which budgets apply, which baseline runs, which repeats.

Resolves the layers (command line > ``llm_budget`` marker > pyproject > the
default ``error_rate_max=0``), loads the baseline history once, before this
session saves its own run (``--llm-baseline`` or ``--benchmark-compare``: see
``baseline.load_history``), and hands each case to the pure ``verdict.judge``
with its evidence (``judge.evidence.CaseHistory``: the case's entries in the
passing runs of the same engine version, not measured on a busy machine, and
the spread pooled over the history's other cases).

With ``--llm-repeat K`` each case is K items, ``...-repeat1`` to
``...-repeatK``, ordered A1 B1 C1 A2 B2 C2 (``plan``). Every repeat is
checked on its own for validity and budgets (an absolute limit holds for
each measurement); the case's last repeat carries the regression verdict on
all its valid repeats together, and its JSON entry the between-repeat spread.

``SessionTally`` counts pytest's own outcomes for the mark a saved run gets
(``schema.run_mark``), so a failed session never becomes a baseline. This
module reads pytest's items and options; what it decides on values lives in
``judge``. It must not measure or write anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from pytest_llmperf.config import Settings
from pytest_llmperf.judge import budgets, verdict
from pytest_llmperf.judge.baseline import Baseline, History, load_history
from pytest_llmperf.judge.evidence import CaseHistory, case_of, repeat_id, repeat_spreads, with_engine
from pytest_llmperf.judge.noise import CaseRun
from pytest_llmperf.records import Outcome, RunResult
from pytest_llmperf.schema import SAMPLE_METRICS, LlmInfo, RepeatSpread, RunMark, engine_version_of, run_mark

REPEAT_PARAM = "llm_repeat"
__all__ = ["REPEAT_PARAM", "Gate", "SessionTally", "case_of", "repeat_id"]


def repeat_of(item: pytest.Item) -> int | None:
    """The item's ``--llm-repeat`` index, or ``None`` without repeats."""
    value = params_of(item).get(REPEAT_PARAM)
    return int(value) if value is not None else None


def params_of(item: pytest.Item) -> Mapping[str, Any]:
    """The item's parametrized values (none for a test without parameters)."""
    params: Mapping[str, Any] = getattr(getattr(item, "callspec", None), "params", {})
    return params


class Gate:
    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self._config = config
        self._settings = settings
        # Parsed at configure time, so a bad budget is a usage error before any server starts.
        self.cli = budgets.parse_cli(list(settings.budgets))
        self.per_model = budgets.parse_tables(settings.pyproject.get("budgets", {}))
        self.tolerances = verdict.parse_tolerances(list(settings.tolerances))
        # Loaded now, so a corrupt, foreign or failed baseline is a usage error before any server starts.
        self.history: History | None = self._load_history()
        self._case_history = CaseHistory(self.history) if self.history is not None else None
        self.cases_in_session = 1
        self._verdict_items: set[str] = set()
        self._measured: dict[str, list[RunResult]] = {}
        self._spreads: dict[str, dict[str, RepeatSpread]] = {}
        self.tally = SessionTally()

    @property
    def baseline(self) -> Baseline | None:
        """The newest baseline run, or ``None`` without one."""
        return self.history.runs[0] if self.history is not None else None

    @property
    def adaptive_target_rel_ci(self) -> float:
        """The CI half-width adaptive stopping should aim at: half the tightest decode tolerance."""
        return self.tolerances.adaptive_target_rel_ci

    def _load_history(self) -> History | None:
        compare = self._config.getoption("benchmark_compare", None)
        storage = str(self._config.getoption("benchmark_storage", "file://./.benchmarks"))
        # pytest-benchmark defaults the option to [] when it is not given.
        return load_history(
            (True if compare is True else str(compare)) if compare else None,
            self._settings.baseline,
            storage=storage,
            limit=self._settings.history,
        )

    # -- collection -------------------------------------------------------------------------

    def plan(self, items: list[pytest.Item]) -> None:
        """Count the session's cases and, with repeats, interleave them: A1 B1 C1 A2 B2 C2.

        Items of one model stay together (its server runs once); other items
        keep their places. The last collected repeat of each case carries its
        verdict.
        """
        ours = [(i, item) for i, item in enumerate(items) if "llm_model" in params_of(item)]
        cases = {case_of(item.nodeid, repeat_of(item)) for _, item in ours}
        self.cases_in_session = max(len(cases), 1)
        if not any(repeat_of(item) is not None for _, item in ours):
            return
        models = list(dict.fromkeys(str(params_of(item)["llm_model"]) for _, item in ours))
        ordered = sorted(
            ours,
            key=lambda pair: (
                models.index(str(params_of(pair[1])["llm_model"])),
                repeat_of(pair[1]) or 0,
                pair[0],
            ),
        )
        for (slot, _), (_, item) in zip(ours, ordered, strict=True):
            items[slot] = item
        last: dict[str, str] = {}
        for _, item in ordered:
            last[case_of(item.nodeid, repeat_of(item))] = item.nodeid
        self._verdict_items = set(last.values())

    def budgets_for(self, node: pytest.Item, model: str) -> budgets.Budgets:
        # iter_markers yields the closest marker first; fold from the farthest so the closest wins.
        marker: budgets.Budgets | None = None
        for mark in reversed(list(node.iter_markers("llm_budget"))):
            layer = budgets.parse_marker(mark.args, mark.kwargs, source=f"llm_budget of {node.nodeid}")
            marker = budgets.merge_budgets(marker, layer)
        return budgets.merge_budgets(budgets.DEFAULTS, self.per_model.get(model), marker, self.cli)

    # -- per test ---------------------------------------------------------------------------

    def judge(
        self,
        node: pytest.Item,
        model: str,
        result: RunResult,
        machine_info: Mapping[str, Any],
        engine_version: str | None,
    ) -> Outcome:
        repeat = repeat_of(node)
        case = case_of(node.nodeid, repeat)
        self._measured.setdefault(case, []).append(result)
        limits = self.budgets_for(node, model)
        rules = verdict.Rules(self.tolerances, self._settings.busy_machine)
        if repeat is not None and node.nodeid not in self._verdict_items:
            # Validity and budgets hold for each measurement; the regression verdict waits for the last.
            return verdict.judge(result, limits, None, rules=rules)
        runs = self._measured[case]
        # A repeat that could not be trusted (busy machine, client saturated) is left out of the verdict.
        valid = [r for r in runs if verdict.judge(r, None, None, rules=rules).kind != "invalid"]
        if repeat is not None:
            self._spreads[case] = repeat_spreads(runs)
        evidence, newest = None, None
        if self._case_history is not None:
            evidence, newest = self._case_history.evidence(
                case,
                model,
                result,
                engine=engine_version,
                comparisons=self.cases_in_session * len(SAMPLE_METRICS),
            )
        hardware = None
        if newest is not None and evidence is not None:
            # The engine version is known once the server runs: per test in extra_info.llm.
            hardware = verdict.check_hardware(
                with_engine(newest.machine_info.get("llmperf"), model, engine_version_of(evidence.newest)),
                with_engine(machine_info, model, engine_version),
                model,
                mode=self._settings.hardware_mismatch,
            )
        return verdict.judge(
            result,
            limits,
            evidence,
            rules=rules,
            hardware=hardware,
            current=CaseRun.from_results(valid or [result]),
        )

    def entry_extra(self, node: pytest.Item) -> LlmInfo:
        """Keys for ``extra_info["llm"]``: case and repeat, and on the last repeat the repeats' spread."""
        repeat = repeat_of(node)
        if repeat is None:
            return LlmInfo()
        case = case_of(node.nodeid, repeat)
        extra = LlmInfo(case=case, repeat=repeat, repeats=self._settings.repeat)
        if node.nodeid in self._verdict_items and case in self._spreads:
            extra["repeat_spread"] = self._spreads[case]
        return extra


class SessionTally:
    """pytest's outcomes for this session, for the mark on the run it saves (a plugin: it gets the hooks)."""

    def __init__(self) -> None:
        self.failed: set[str] = set()
        self.errors: set[str] = set()
        self.invalid: set[str] = set()
        self.interrupted = False

    def pytest_keyboard_interrupt(self) -> None:
        self.interrupted = True

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.add(report)

    def add(self, report: pytest.TestReport) -> None:
        if not report.failed:
            return
        if getattr(report, "llmperf_invalid", False):
            self.invalid.add(report.nodeid)
        elif report.when == "call":
            self.failed.add(report.nodeid)
        else:
            self.errors.add(report.nodeid)

    def mark(self) -> RunMark:
        return run_mark(
            failed=len(self.failed),
            errors=len(self.errors),
            invalid=len(self.invalid),
            interrupted=self.interrupted,
        )

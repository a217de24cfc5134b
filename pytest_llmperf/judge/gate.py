"""Per-test gating: which budgets apply, which baseline runs, which setup check, which repeats.

Resolves the layers (command line > ``llm_budget`` marker > pyproject > the
default ``error_rate_max=0``), loads the baseline history once, before this
session saves its own run (``--llm-baseline`` or ``--benchmark-compare``: see
``baseline.load_history``), and hands each case to the pure ``verdict.judge``
with its evidence: the case's entries in the passing runs of the same engine
version, not measured on a busy machine, and the spread pooled over the
history's other cases.

With ``--llm-repeat K`` each case is K items, ``...-repeat1`` to
``...-repeatK``, ordered A1 B1 C1 A2 B2 C2 (``plan``). Every repeat is
checked on its own for validity and budgets (an absolute limit holds for
each measurement); the case's last repeat carries the regression verdict on
all its valid repeats together, and its JSON entry the between-repeat spread.

``SessionTally`` counts pytest's own outcomes for the mark a saved run gets
(``schema.run_mark``), so a failed session never becomes a baseline. This
module must not measure or write anything.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from pytest_llmperf.config import Settings
from pytest_llmperf.judge import budgets, verdict
from pytest_llmperf.judge.baseline import Baseline, History, load_history
from pytest_llmperf.judge.busy import is_busy
from pytest_llmperf.judge.noise import CaseRun, history_spread, repeat_spread
from pytest_llmperf.measure.stats import pairwise_spread
from pytest_llmperf.records import Outcome, RunResult
from pytest_llmperf.schema import (
    SAMPLE_METRICS,
    LlmInfo,
    RepeatSpread,
    RunMark,
    engine_version_of,
    run_mark,
)

REPEAT_PARAM = "llm_repeat"


def repeat_id(index: int) -> str:
    return f"repeat{index}"


def case_of(nodeid: str, repeat: int | None) -> str:
    """The case a test id measures: its node id without the ``repeatN`` parameter id."""
    if repeat is None:
        return nodeid
    rid = re.escape(repeat_id(repeat))
    return re.sub(rf"\[{rid}\]|(?<=\[){rid}-|-{rid}(?=[-\]])", "", nodeid, count=1)


def _repeat_of(item: pytest.Item) -> int | None:
    params = getattr(getattr(item, "callspec", None), "params", {})
    value = params.get(REPEAT_PARAM)
    return int(value) if value is not None else None


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
        self.cases_in_session = 1
        self._verdict_items: set[str] = set()
        self._measured: dict[str, list[RunResult]] = {}
        self._pooled: dict[tuple[str, str | None], tuple[dict[str, Any], dict[str, Any]]] = {}
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
        ours = [(i, item) for i, item in enumerate(items) if "llm_model" in _params(item)]
        cases = {case_of(item.nodeid, _repeat_of(item)) for _, item in ours}
        self.cases_in_session = max(len(cases), 1)
        if not any(_repeat_of(item) is not None for _, item in ours):
            return
        models = list(dict.fromkeys(str(_params(item)["llm_model"]) for _, item in ours))
        ordered = sorted(
            ours,
            key=lambda pair: (
                models.index(str(_params(pair[1])["llm_model"])),
                _repeat_of(pair[1]) or 0,
                pair[0],
            ),
        )
        for (slot, _), (_, item) in zip(ours, ordered, strict=True):
            items[slot] = item
        last: dict[str, str] = {}
        for _, item in ordered:
            last[case_of(item.nodeid, _repeat_of(item))] = item.nodeid
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
        repeat = _repeat_of(node)
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
            self._spreads[case] = _repeat_spreads(runs)
        evidence, newest = self._evidence(case, model, engine_version, result)
        hardware = None
        if newest is not None and evidence is not None:
            # The engine version is known once the server runs: per test in extra_info.llm.
            hardware = verdict.check_hardware(
                _with_engine(newest.machine_info.get("llmperf"), model, engine_version_of(evidence.newest)),
                _with_engine(machine_info, model, engine_version),
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
        repeat = _repeat_of(node)
        if repeat is None:
            return LlmInfo()
        case = case_of(node.nodeid, repeat)
        extra = LlmInfo(case=case, repeat=repeat, repeats=self._settings.repeat)
        if node.nodeid in self._verdict_items and case in self._spreads:
            extra["repeat_spread"] = self._spreads[case]
        return extra

    # -- evidence ---------------------------------------------------------------------------

    def _evidence(
        self, case: str, model: str, engine: str | None, result: RunResult
    ) -> tuple[verdict.Evidence | None, Baseline | None]:
        history = self.history
        if history is None:
            return None, None
        comparisons = self.cases_in_session * len(SAMPLE_METRICS)
        if history.explicit:
            run = history.runs[0]
            llms = run.case(case)
            if not llms:
                return None, None
            return verdict.Evidence((CaseRun.from_entries(llms),), llms[-1], comparisons=comparisons), run
        found = [(run, llms) for run in history.runs if _usable(llms := run.case(case), engine, result)]
        if not found:
            # Nothing of this engine version (or only busy or failed entries): fall back to the
            # newest entry, so the hardware check can say what changed.
            newest = next(((run, llms) for run in history.runs if (llms := run.case(case))), None)
            if newest is None:
                return None, None
            run, llms = newest
            return verdict.Evidence((CaseRun.from_entries(llms),), llms[-1], comparisons=comparisons), run
        notes = []
        with_case = sum(1 for run in history.runs if run.case(case))
        if len(found) < with_case:
            notes.append(
                f"compared with {len(found)} of the {with_case} baseline runs of this case "
                "(the others ran another engine version, another scenario, or did not pass)"
            )
        pooled_history, pooled_repeats = self._pooled_spreads(model, engine)
        return (
            verdict.Evidence(
                tuple(CaseRun.from_entries(llms) for _, llms in found),
                found[0][1][-1],
                pooled_history if len(found) >= 2 else {},
                pooled_repeats,
                comparisons,
                tuple(notes),
            ),
            found[0][0],
        )

    def _pooled_spreads(self, model: str, engine: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Spreads pooled over every case of the history: between runs, and between repeats."""
        key = (model, engine)
        if key not in self._pooled:
            assert self.history is not None
            keys = list(dict.fromkeys(k for run in self.history.runs for k in run.case_keys()))
            groups: list[list[CaseRun]] = []
            for k in keys:
                runs = [
                    CaseRun.from_entries(llms)
                    for run in self.history.runs
                    if (llms := run.case(k)) and llms[0].get("model") == model and _usable(llms, engine)
                ]
                groups.append(runs)
            by_history = {m: history_spread([g for g in groups if len(g) >= 2], m) for m in SAMPLE_METRICS}
            newest = [g[0] for g in groups if g]
            by_repeats = {m: repeat_spread(newest, m) for m in SAMPLE_METRICS}
            self._pooled[key] = (by_history, by_repeats)
        return self._pooled[key]


def _usable(llms: Sequence[Mapping[str, Any]], engine: str | None, result: RunResult | None = None) -> bool:
    """Whether a run's entries of a case may be history: passed, quiet machine, same engine and scenario."""
    if not llms or any(llm.get("outcome", "pass") != "pass" or is_busy(llm) for llm in llms):
        return False
    if result is not None and verdict.scenario_mismatch(llms[0], result) is not None:
        return False
    then = engine_version_of(llms[0])
    return engine is None or then is None or then == engine


def _params(item: pytest.Item) -> Mapping[str, Any]:
    params: Mapping[str, Any] = getattr(getattr(item, "callspec", None), "params", {})
    return params


def _repeat_spreads(runs: Sequence[RunResult]) -> dict[str, RepeatSpread]:
    """Each metric's per-repeat medians and their robust relative spread."""
    case_run = CaseRun.from_results(runs)
    out: dict[str, RepeatSpread] = {}
    for metric in SAMPLE_METRICS:
        logs = case_run.repeat_logs(metric)
        if not logs:
            continue
        spread = pairwise_spread([logs])
        out[metric] = RepeatSpread(
            medians=[round(math.exp(v), 4) for v in logs],
            spread_pct=round(100 * math.expm1(spread[0]), 3) if spread is not None else None,
        )
    return out


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


def _with_engine(llmperf_info: object, model: str, engine: object) -> dict[str, Any]:
    """``{"llmperf": info}`` with ``servers[model].engine_version`` filled in."""
    if not isinstance(llmperf_info, Mapping):
        return {}
    info = dict(llmperf_info)
    servers = dict(info.get("servers") or {})
    servers[model] = {**(servers.get(model) or {}), "engine_version": engine or None}
    info["servers"] = servers
    return {"llmperf": info}

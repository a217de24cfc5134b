"""What a case is compared with: its baseline runs, chosen from the history, and its repeats.

A case is a test id without its ``repeatN`` parameter id (``case_of``).
``CaseHistory`` picks a case's evidence from the baseline history: its
entries in the passing runs of the same engine version and scenario, not
measured on a busy machine (``usable``), and the spread pooled over the
history's other cases. ``repeat_spreads`` is the spread between a case's
repeats in this session, for its JSON entry; ``with_engine`` fills the
engine version a hardware check compares.

Pure values in and out: no pytest (``pytest_llmperf.pytest.gate`` reads the
items and options and asks here), nothing measured or written.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pytest_llmperf.judge import verdict
from pytest_llmperf.judge.baseline import Baseline, History
from pytest_llmperf.judge.busy import is_busy
from pytest_llmperf.judge.noise import CaseRun, history_spread, repeat_spread
from pytest_llmperf.measure.stats import pairwise_spread
from pytest_llmperf.records import RunResult
from pytest_llmperf.schema import SAMPLE_METRICS, RepeatSpread, engine_version_of


def repeat_id(index: int) -> str:
    return f"repeat{index}"


def case_of(nodeid: str, repeat: int | None) -> str:
    """The case a test id measures: its node id without the ``repeatN`` parameter id."""
    if repeat is None:
        return nodeid
    rid = re.escape(repeat_id(repeat))
    return re.sub(rf"\[{rid}\]|(?<=\[){rid}-|-{rid}(?=[-\]])", "", nodeid, count=1)


class CaseHistory:
    """The baseline history, read per case; the pooled spreads are computed once per model and engine."""

    def __init__(self, history: History) -> None:
        self.history = history
        self._pooled: dict[tuple[str, str | None], tuple[dict[str, Any], dict[str, Any]]] = {}

    def evidence(
        self, case: str, model: str, result: RunResult, *, engine: str | None, comparisons: int
    ) -> tuple[verdict.Evidence | None, Baseline | None]:
        """The case's evidence and the run it newest comes from; ``(None, None)`` without any."""
        history = self.history
        if history.explicit:
            run = history.runs[0]
            llms = run.case(case)
            if not llms:
                return None, None
            return verdict.Evidence((CaseRun.from_entries(llms),), llms[-1], comparisons=comparisons), run
        found = [(run, llms) for run in history.runs if usable(llms := run.case(case), engine, result)]
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
        pooled_history, pooled_repeats = self.pooled_spreads(model, engine)
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

    def pooled_spreads(self, model: str, engine: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Spreads pooled over every case of the history: between runs, and between repeats."""
        key = (model, engine)
        if key not in self._pooled:
            keys = list(dict.fromkeys(k for run in self.history.runs for k in run.case_keys()))
            groups: list[list[CaseRun]] = []
            for k in keys:
                runs = [
                    CaseRun.from_entries(llms)
                    for run in self.history.runs
                    if (llms := run.case(k)) and llms[0].get("model") == model and usable(llms, engine)
                ]
                groups.append(runs)
            by_history = {m: history_spread([g for g in groups if len(g) >= 2], m) for m in SAMPLE_METRICS}
            newest = [g[0] for g in groups if g]
            by_repeats = {m: repeat_spread(newest, m) for m in SAMPLE_METRICS}
            self._pooled[key] = (by_history, by_repeats)
        return self._pooled[key]


def usable(llms: Sequence[Mapping[str, Any]], engine: str | None, result: RunResult | None = None) -> bool:
    """Whether a run's entries of a case may be history: passed, quiet machine, same engine and scenario."""
    if not llms or any(llm.get("outcome", "pass") != "pass" or is_busy(llm) for llm in llms):
        return False
    if result is not None and verdict.scenario_mismatch(llms[0], result) is not None:
        return False
    then = engine_version_of(llms[0])
    return engine is None or then is None or then == engine


def repeat_spreads(runs: Sequence[RunResult]) -> dict[str, RepeatSpread]:
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


def with_engine(llmperf_info: object, model: str, engine: object) -> dict[str, Any]:
    """``{"llmperf": info}`` with ``servers[model].engine_version`` filled in."""
    if not isinstance(llmperf_info, Mapping):
        return {}
    info = dict(llmperf_info)
    servers = dict(info.get("servers") or {})
    servers[model] = {**(servers.get(model) or {}), "engine_version": engine or None}
    info["servers"] = servers
    return {"llmperf": info}

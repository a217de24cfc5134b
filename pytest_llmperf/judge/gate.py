"""Per-test gating: which budgets apply, which baseline entry, which setup check.

Resolves the layers (command line > ``llm_budget`` marker > pyproject > the
default ``error_rate_max=0``), finds
the baseline run (``--llm-baseline`` or what ``--benchmark-compare`` selects,
resolved once, before this session saves its own run) and hands everything to
the pure ``verdict.judge``. This module must not measure or write anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from pytest_llmperf.config import Settings
from pytest_llmperf.judge import budgets, verdict
from pytest_llmperf.judge.baseline import Baseline, load_baseline, resolve_compare
from pytest_llmperf.records import Outcome, RunResult
from pytest_llmperf.schema import engine_version_of


class Gate:
    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self._config = config
        self._settings = settings
        # Parsed at configure time, so a bad budget is a usage error before any server starts.
        self.cli = budgets.parse_cli(list(settings.budgets))
        self.per_model = budgets.parse_tables(settings.pyproject.get("budgets", {}))
        self.tolerances = verdict.parse_tolerances(list(settings.tolerances))
        path = self._find_baseline()
        # Loaded now, so a corrupt or foreign baseline is a usage error before any server starts.
        self.baseline: Baseline | None = load_baseline(path) if path is not None else None

    def _find_baseline(self) -> Path | None:
        if self._settings.baseline is not None:
            return self._settings.baseline
        compare = self._config.getoption("benchmark_compare", None)
        if not compare:  # pytest-benchmark defaults it to []
            return None
        storage = str(self._config.getoption("benchmark_storage", "file://./.benchmarks"))
        return resolve_compare(True if compare is True else str(compare), storage)

    def budgets_for(self, node: pytest.Item, model: str) -> budgets.Budgets:
        # iter_markers yields the closest marker first; fold from the farthest so the closest wins.
        marker: budgets.Budgets | None = None
        for mark in reversed(list(node.iter_markers("llm_budget"))):
            layer = budgets.parse_marker(mark.args, mark.kwargs, source=f"llm_budget of {node.nodeid}")
            marker = budgets.merge_budgets(marker, layer)
        return budgets.merge_budgets(budgets.DEFAULTS, self.per_model.get(model), marker, self.cli)

    def judge(
        self,
        node: pytest.Item,
        model: str,
        result: RunResult,
        machine_info: Mapping[str, Any],
        engine_version: str | None,
    ) -> Outcome:
        baseline = self.baseline
        entry = baseline.llm(node.nodeid) if baseline is not None else None
        hardware = None
        if baseline is not None and entry is not None:
            # The engine version is known once the server runs: per test in extra_info.llm.
            hardware = verdict.check_hardware(
                _with_engine(baseline.machine_info.get("llmperf"), model, engine_version_of(entry)),
                _with_engine(machine_info, model, engine_version),
                model,
                mode=self._settings.hardware_mismatch,
            )
        return verdict.judge(
            result,
            self.budgets_for(node, model),
            entry,
            tolerances=self.tolerances,
            hardware=hardware,
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

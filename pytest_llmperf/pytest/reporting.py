"""The session's output that is not one test's: progress lines, warnings, machine info, the end.

``Reporting`` shows progress under capture, collects the session's warnings
(once each, with the GPU probe's), reads ``machine_info["llmperf"]`` once
(what a baseline comparison checks), prints the llmperf summary, and at the
end writes the ``--llm-report`` Markdown or, in a pytest-xdist worker, hands
the results to the controller (``xdistmerge``). ``fit_table`` is
``--llm-fit``'s answer.

This module writes finished values; it must not measure, judge or start anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from pytest_llmperf.config import Settings
from pytest_llmperf.errors import ConfigError
from pytest_llmperf.pytest import xdistmerge
from pytest_llmperf.pytest.testreport import TestReports
from pytest_llmperf.servers import models as model_registry


class Reporting:
    """The session's warnings, machine info and end-of-session output; ``server_info`` per model."""

    def __init__(
        self, config: pytest.Config, settings: Settings, reports: TestReports, server_info: Mapping[str, Any]
    ) -> None:
        self.config = config
        self.settings = settings
        self.reports = reports
        self.server_info = server_info
        self._warnings: list[str] = []
        self._machine_info: dict[str, Any] | None = None

    def progress(self, line: str) -> None:
        """Show progress (a llama-server build, a model pull) even under capture."""
        self.reports.write_line(self.config, f"[llmperf] {line}")

    # -- warnings ---------------------------------------------------------------------------

    def session_warnings(self) -> list[str]:
        from pytest_llmperf import telemetry

        _reader, gpu_warning = telemetry.probe_gpu()
        return list(dict.fromkeys(([gpu_warning] if gpu_warning else []) + self._warnings))

    def warn_once(self, text: str) -> None:
        if text not in self._warnings:
            self._warnings.append(text)

    # -- machine info -----------------------------------------------------------------------

    def machine_info(self) -> dict[str, Any]:
        """``machine_info["llmperf"]``: the setup a baseline comparison checks.

        Read once: every field is fixed for the session, and each test's verdict asks.
        """
        if self._machine_info is None:
            self._machine_info = self._read_machine_info()
        return self._machine_info

    def _read_machine_info(self) -> dict[str, Any]:
        from pytest_llmperf import telemetry

        host: dict[str, Any] = dict(telemetry.machine_info())
        gpu = host.get("gpu") or {}
        names = gpu.get("names") or []
        return {
            "schema": 1,
            "gpu_name": names[0] if names else None,
            "gpu_count": int(gpu.get("count") or 0),
            "gpu_driver": gpu.get("driver_version"),
            "servers": dict(self.server_info),
            "host": host,
        }

    # -- end of session ---------------------------------------------------------------------

    def terminal_summary(self, reporter: Any) -> None:
        self.reports.terminal_summary(reporter, self.session_warnings())

    def finish(self) -> None:
        """The servers are stopped: hand the results to the xdist controller, or write the report."""
        if hasattr(self.config, "workerinput"):
            # A pytest-xdist worker: the controller merges every worker's results and writes them.
            xdistmerge.hand_over(
                self.config, self.reports.finished, self.reports.notes, self.session_warnings()
            )
        elif self.settings.report_dir is not None:
            self.reports.write_report(self.settings.report_dir, self.progress)


def fit_table(config: pytest.Config) -> str:
    """``--llm-fit``: which models fit this machine, from the registry with the pyproject's overrides."""
    from pytest_llmperf.config import load_pyproject
    from pytest_llmperf.servers import fit

    try:
        pyproject = load_pyproject(config.rootpath)
        registry = model_registry.registry_with_overrides(pyproject.get("models", {}))
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    return fit.table(registry)

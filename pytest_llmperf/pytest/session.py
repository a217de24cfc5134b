"""Per-session state: the servers, each test's wiring and outcome, end-of-session output.

The plugin keeps one ``LlmPerfSession`` in ``config.stash``. It composes the
session's parts, each of one concern, and plans from the collected tests:

* ``servers`` (``lifecycle.ServerLifecycle``): the models, a ``ServerPool``
  (one server per model, started when its first test needs it, restarted
  bigger when a run needs more, stopped after its last test; pytest's
  session-scoped parametrize runs one model's tests together, so two servers
  never run at once), the cores of server and client (``placement``), and
  every server stopped on SIGTERM, Ctrl-C or exit;
* ``gate`` (``gate.Gate``): each test's budgets, baseline and repeats;
* ``reports`` (``testreport.TestReports``): each test's final outcome from
  pytest's reports, written into every artifact;
* ``recording`` (``recording.Recording``): the ``llm_perf`` fixture wired to
  narrow callables, each finished case recorded, the pytest-benchmark hooks
  and the pytest-xdist controller's merge;
* ``reporting`` (``reporting.Reporting``): progress lines, warnings, machine
  info, the llmperf summary and the end of the session.

Measurement lives in ``perf.py``; this module only composes and plans.
"""

from __future__ import annotations

import pytest

from pytest_llmperf.config import Settings
from pytest_llmperf.errors import LlmPerfError
from pytest_llmperf.pytest.gate import Gate, params_of
from pytest_llmperf.pytest.lifecycle import ServerLifecycle
from pytest_llmperf.pytest.recording import Recording
from pytest_llmperf.pytest.reporting import Reporting
from pytest_llmperf.pytest.testreport import TestReports


class LlmPerfSession:
    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.servers = ServerLifecycle(config, settings, progress=self.progress)
        self.gate = Gate(config, settings)
        self.reports = TestReports(self.servers.pool.label, settings)
        self.reporting = Reporting(config, settings, self.reports, self.servers.server_info)
        self.recording = Recording(config, self.servers, self.gate, self.reports, self.reporting)
        self._usage_errors: list[str] = []
        self.servers.install_signal_handlers()

    def progress(self, line: str) -> None:
        """Show progress (a llama-server build, a model pull) even under capture."""
        self.reporting.progress(line)

    # -- collection -------------------------------------------------------------------------

    def models_for(self, definition: pytest.Function) -> list[str]:
        model_names = self.servers.model_names
        marker = definition.get_closest_marker("llm_models")
        if marker is None:
            return list(model_names)
        bad = [a for a in marker.args if not isinstance(a, str)] + [f"{k}=" for k in marker.kwargs]
        if bad:
            # Raised by plan(): a usage error at collection, rather than a collection error here.
            self._usage_errors.append(
                f"llm_models of {definition.nodeid} takes model names, got {bad[0]!r}; "
                'write e.g. @pytest.mark.llm_models("gemma3-270m")'
            )
            return list(model_names)
        return [m for m in model_names if m in marker.args]

    def plan(self, items: list[pytest.Item]) -> None:
        """Size servers from the collected tests' ``concurrency``/token parameters.

        Literal arguments are seen only when a test runs; ``ServerPool.ensure``
        restarts a server that turns out too small then.
        """
        if self._usage_errors:
            raise pytest.UsageError(self._usage_errors[0])
        concurrency, context = 0, 0
        for item in items:
            params = params_of(item)
            if "llm_model" not in params:
                continue
            try:
                # A bad llm_budget marker is a usage error now, not after its server has run.
                self.gate.budgets_for(item, str(params["llm_model"]))
            except LlmPerfError as exc:
                raise pytest.UsageError(str(exc)) from None
            concurrency = max(concurrency, _int(params.get("concurrency")))
            context = max(context, _int(params.get("input_tokens")) + _int(params.get("output_tokens")))
        pool = self.servers.pool
        if self.settings.max_concurrency is None and concurrency:
            pool.size.slots = concurrency
        if context:
            pool.size.context_tokens = context

    # -- end of session ---------------------------------------------------------------------

    def close(self) -> None:
        self.servers.close()

    def finish(self) -> None:
        self.close()
        self.reporting.finish()


def _int(value: object) -> int:
    """A collected parameter as a size: whole numbers count, anything else is left to the run."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0

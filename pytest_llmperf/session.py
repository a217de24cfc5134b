"""Per-session state: one server per model, the results, end-of-session output.

The plugin keeps one ``LlmPerfSession`` in ``config.stash``. It sizes the
servers from the collected tests, starts a model's server when its first test
needs it and stops it after the last one (pytest's session-scoped parametrize
runs one model's tests together, so two servers never run at once), stops
every server on SIGTERM, Ctrl-C or exit, and writes reports at the end.
Measurement itself lives in ``perf.py``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from pytest_llmperf import schema
from pytest_llmperf.config import Settings
from pytest_llmperf.errors import ConfigError, LlmPerfError, ServerDiedError
from pytest_llmperf.judge.gate import Gate
from pytest_llmperf.output import benchjson
from pytest_llmperf.output.report import junit_properties
from pytest_llmperf.perf import LlmPerf
from pytest_llmperf.records import CaseResult, Outcome, RunResult
from pytest_llmperf.servers import models as model_registry
from pytest_llmperf.servers.base import LaunchRequest, Server
from pytest_llmperf.servers.models import DEFAULT_MODEL, ModelSpec

DEFAULT_MAX_CONCURRENCY = 4
DEFAULT_MAX_CONTEXT = 2048
REDACTED = "<redacted: --llm-api-key-env>"
CASES_KEY = pytest.StashKey[list[CaseResult]]()
ENGINES = {"llamacpp": "llama.cpp", "vllm": "vllm", "ollama": "ollama", "openai": "openai-compatible"}


def _raise(exc: BaseException) -> None:
    raise exc


class LlmPerfSession:
    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.registry = model_registry.registry_with_overrides(settings.pyproject.get("models", {}))
        self.model_names: tuple[str, ...] = settings.models or (DEFAULT_MODEL,)
        self.specs: dict[str, ModelSpec] = {
            name: model_registry.lookup(name, self.registry) for name in self.model_names
        }
        self.gate = Gate(config, settings)
        self.max_concurrency = settings.max_concurrency or DEFAULT_MAX_CONCURRENCY
        self.max_context = DEFAULT_MAX_CONTEXT
        self.servers: dict[str, Server] = {}
        # Fixed at configure time: pytest-benchmark compares machine_info at start and at save.
        self.server_info = {name: self._server_info(name) for name in self.model_names}
        self.dead: dict[str, str] = {}
        self.results: list[CaseResult] = []
        self._warnings: list[str] = []
        self._log_dir: Path | None = None
        self._machine_info: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._previous_sigterm: Any = None
        self._install_signal_handlers()
        atexit.register(self.close)

    # -- planning ---------------------------------------------------------------------------

    def backend_for(self, model: str) -> str:
        return self.settings.backend or self.specs[model].default_backend

    def _server_info(self, model: str) -> dict[str, Any]:
        spec, backend = self.specs[model], self.backend_for(model)
        ids = {"llamacpp": spec.gguf, "vllm": spec.vllm, "ollama": spec.ollama}
        return {
            "backend": backend,
            "engine": ENGINES.get(backend, backend),
            "model_id": ids.get(backend) or spec.name,
            "model_revision": None,
        }

    def models_for(self, definition: pytest.Function) -> list[str]:
        marker = definition.get_closest_marker("llm_models")
        if marker is None:
            return list(self.model_names)
        wanted = [str(a) for a in marker.args]
        return [m for m in self.model_names if m in wanted]

    def plan(self, items: list[pytest.Item]) -> None:
        """Size servers from the collected tests' ``concurrency``/token parameters."""
        concurrency, context = 0, 0
        for item in items:
            params = getattr(getattr(item, "callspec", None), "params", {})
            if "llm_model" not in params:
                continue
            try:
                # A bad llm_budget marker is a usage error now, not after its server has run.
                self.gate.budgets_for(item, str(params["llm_model"]))
            except LlmPerfError as exc:
                raise pytest.UsageError(str(exc)) from None
            concurrency = max(concurrency, int(params.get("concurrency", 0) or 0))
            tokens = int(params.get("input_tokens", 0) or 0) + int(params.get("output_tokens", 0) or 0)
            context = max(context, tokens)
        if self.settings.max_concurrency is None and concurrency:
            self.max_concurrency = concurrency
        if context:
            self.max_context = context

    # -- servers ----------------------------------------------------------------------------

    @property
    def log_dir(self) -> Path:
        if self._log_dir is None:
            factory = getattr(self.config, "_tmp_path_factory", None)
            base = factory.getbasetemp() if factory is not None else Path(tempfile.mkdtemp())
            self._log_dir = base / "llmperf-logs"
            self._log_dir.mkdir(parents=True, exist_ok=True)
        return self._log_dir

    def progress(self, line: str) -> None:
        """Show progress (a llama-server build, a model pull) even under capture."""
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        cm = capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()
        with cm:
            if reporter is not None:
                reporter.write_line(f"[llmperf] {line}")
            else:
                print(f"[llmperf] {line}", file=sys.stderr)

    def start_server(self, model: str) -> Server:
        from pytest_llmperf.servers import fit
        from pytest_llmperf.servers.backends import get_backend

        spec = self.specs[model]
        backend_name = self.backend_for(model)
        if self.settings.base_url is None:
            verdict = fit.check(spec, backend_name, self.settings.server_options, self.max_context,
                                self.max_concurrency)  # fmt: skip
            if not verdict.fits:
                pytest.skip(verdict.reason)
        request = LaunchRequest(
            model=spec,
            max_concurrency=self.max_concurrency,
            max_context=self.max_context,
            log_dir=self.log_dir,
            start_timeout_s=self.settings.start_timeout_s,
            base_url=self.settings.base_url,
            api_key=self.settings.api_key,
            executable=self.settings.server_executable,
            extra_args=self.settings.server_args,
            options=self.settings.server_options,
        )
        backend = get_backend(backend_name, progress=self.progress)
        started = time.monotonic()
        server = backend.launch(request)
        with self._lock:
            self.servers[model] = server
        pid = f"pid {server.pid}" if server.pid is not None else "attached"
        self.progress(
            f"server started for {model} ({backend_name}, {pid}, {server.base_url}) "
            f"in {time.monotonic() - started:.1f} s"
        )
        return server

    def stop_server(self, model: str) -> None:
        with self._lock:
            server = self.servers.pop(model, None)
        if server is not None:
            server.stop()
            self.progress(f"server stopped for {model}")

    def check_server(self, model: str, server: Server) -> None:
        """Error fast for a model whose server already died; detect a fresh death."""
        if model in self.dead:
            raise ServerDiedError(self.dead[model])
        try:
            server.check_alive()
        except ServerDiedError as exc:
            self.dead[model] = str(exc)
            raise

    def close(self) -> None:
        with self._lock:
            servers = list(self.servers.items())
            self.servers.clear()
        for _model, server in servers:
            with contextlib.suppress(Exception):
                server.stop()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            # Become a KeyboardInterrupt: pytest then tears fixtures down and writes results.
            interrupt = KeyboardInterrupt(f"signal {signum}")
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                raise interrupt from None
            # A measurement's loop is running: raised here, the interrupt could land in a
            # transport callback, where uvloop swallows it and the run goes on. Raise it from
            # a loop callback instead, which ends the loop.
            loop.call_soon_threadsafe(_raise, interrupt)

        self._previous_sigterm = signal.signal(signal.SIGTERM, on_sigterm)

    def restore_signal_handlers(self) -> None:
        """Put back the SIGTERM handler we replaced (an in-process pytester run, say)."""
        if self._previous_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    # -- per test ---------------------------------------------------------------------------

    def perf_for(self, item: pytest.Item, model: str, server: Server, benchmark: Any) -> LlmPerf:
        """The fixture object for one test, wired to this session by narrow callables."""

        def judge(result: RunResult) -> Outcome:
            try:
                return self.gate.judge(item, model, result, self.machine_info(), server.engine_version)
            except LlmPerfError as exc:
                raise pytest.UsageError(str(exc)) from None

        def record(case: CaseResult) -> None:
            self.record(item, benchmark, case)

        return LlmPerf(
            nodeid=item.nodeid,
            model=model,
            backend=self.backend_for(model),
            server=server,
            settings=self.settings,
            judge=judge,
            record=record,
            check_server=lambda: self.check_server(model, server),
            warn=self.warn_once,
        )

    def record(self, item: pytest.Item, benchmark: Any, case: CaseResult) -> None:
        """Keep a finished case and write it where pytest's reports will read it."""
        self.results.append(case)
        item.stash.setdefault(CASES_KEY, []).append(case)
        info = schema.llm_info(case.run, case.outcome, engine=case.engine, engine_version=case.engine_version)
        info.update(self.gate.entry_extra(item))  # case/repeat keys under --llm-repeat (judge.gate)
        e2e_s = [r.e2e_ns / 1e9 for r in case.run.measured if r.e2e_ns is not None]
        benchjson.record(benchmark, info, e2e_s)
        # On the item, so the teardown report (which junitxml reads) carries them.
        item.user_properties.extend(junit_properties(case.run, case.outcome))

    @staticmethod
    def cases_of(item: pytest.Item) -> list[CaseResult]:
        return item.stash.get(CASES_KEY, [])

    def enforce(self, item: pytest.Item) -> None:
        failing = [c for c in self.cases_of(item) if c.outcome.kind != "pass"]
        if not failing:
            return
        reasons = [f"{c.outcome.kind}: {reason}" for c in failing for reason in c.outcome.reasons]
        pytest.fail("\n".join(reasons), pytrace=False)

    def annotate(self, item: pytest.Item, report: pytest.TestReport) -> None:
        if report.when != "call" or not report.failed:
            return
        if any(c.outcome.kind == "invalid" for c in self.cases_of(item)):
            report.llmperf_invalid = True  # type: ignore[attr-defined]

    def redact(self, report: pytest.TestReport) -> None:
        """Blank the API key out of a report: with ``-l`` a traceback shows every frame's
        locals, and some frames hold the ``Authorization`` header in a plain dict."""
        key = self.settings.api_key
        if not key:
            return
        if report.longrepr is not None and key in str(report.longrepr):
            report.longrepr = str(report.longrepr).replace(key, REDACTED)
        report.sections = [(name, text.replace(key, REDACTED)) for name, text in report.sections]

    # -- end of session ---------------------------------------------------------------------

    def terminal_summary(self, reporter: Any) -> None:
        if not self.results:
            return
        from pytest_llmperf.output import report as reports

        reporter.write_sep("-", "llmperf summary")
        reporter.write_line(reports.terminal_table(self._rows()))
        # What the verdicts noticed without deciding on it (one baseline run, too few samples, ...).
        for case in self.results:
            for note in case.outcome.notes:
                reporter.write_line(f"note: {case.nodeid}: {note}")
        for warning in self.session_warnings():
            reporter.write_line(f"warning: {warning}", yellow=True)

    def _rows(self) -> list[Any]:
        from pytest_llmperf.output import report as reports

        return [reports.ReportRow.from_result(r.nodeid, r.run, r.outcome) for r in self.results]

    def session_warnings(self) -> list[str]:
        from pytest_llmperf import telemetry

        _reader, gpu_warning = telemetry.probe_gpu()
        return ([gpu_warning] if gpu_warning else []) + list(self._warnings)

    def warn_once(self, text: str) -> None:
        if text not in self._warnings:
            self._warnings.append(text)

    def finish(self) -> None:
        self.close()
        report_dir = self.settings.report_dir
        if report_dir is None or not self.results:
            return
        from pytest_llmperf.output import report as reports

        try:
            reports.write_markdown(report_dir, self._rows())
            reports.write_plots(report_dir, [r.run for r in self.results])
        except (OSError, LlmPerfError) as exc:
            self.progress(f"could not write the report into {report_dir}: {exc}")

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

    @staticmethod
    def fit_table(config: pytest.Config) -> str:
        from pytest_llmperf.config import load_pyproject
        from pytest_llmperf.servers import fit

        try:
            pyproject = load_pyproject(config.rootpath)
            registry = model_registry.registry_with_overrides(pyproject.get("models", {}))
        except ConfigError as exc:
            raise pytest.UsageError(str(exc)) from None
        return fit.table(registry)

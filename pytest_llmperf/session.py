"""Per-session state: the servers, each test's outcome, end-of-session output.

The plugin keeps one ``LlmPerfSession`` in ``config.stash``. It sizes the
servers from the collected tests and hands them to a ``ServerPool`` (one
server per model, started when its first test needs it, restarted bigger
when a run needs more, stopped after its last test; pytest's session-scoped
parametrize runs one model's tests together, so two servers never run at
once). It stops every server on SIGTERM, Ctrl-C or exit. Per model it
decides the cores of the server and of the client (``servers.pinning``), the
client's workers and connections, and records them in each entry's
``extra_info["llm"]["client"]``. Under pytest-xdist a worker hands its
results to the controller, which merges them (``xdistmerge``).

Per test it wires the ``llm_perf`` fixture to narrow callables, and, from
pytest's reports, decides the test's final outcome (``judge.outcome``) and
writes it into every artifact: the benchmark entry, the JSONL, JUnit, the
terminal table and the Markdown report. An ``LlmPerfError`` from a test is a
failure without a traceback; the one of a server that cannot start or died
is shown in full once, and in one line for its model's later tests.
Measurement lives in ``perf.py``, the per-test report glue in ``testreport.py``.
"""

from __future__ import annotations

import asyncio
import atexit
import signal
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import Any, cast

import pytest

from pytest_llmperf import schema, xdistmerge
from pytest_llmperf.config import Settings
from pytest_llmperf.errors import ConfigError, DoesNotFit, LlmPerfError
from pytest_llmperf.judge.gate import Gate
from pytest_llmperf.output import benchjson
from pytest_llmperf.output.report import junit_properties
from pytest_llmperf.perf import LlmPerf
from pytest_llmperf.placement import Placement
from pytest_llmperf.records import CaseResult, Outcome, RunResult
from pytest_llmperf.servers import models as model_registry
from pytest_llmperf.servers.base import LaunchRequest, Server
from pytest_llmperf.servers.models import DEFAULT_MODEL, ModelSpec
from pytest_llmperf.servers.pool import ServerPool
from pytest_llmperf.testreport import TestReports

DEFAULT_MAX_CONCURRENCY = 4
DEFAULT_MAX_CONTEXT = 2048
ENGINES = {"llamacpp": "llama.cpp", "vllm": "vllm", "ollama": "ollama", "openai": "openai-compatible"}


def _raise(exc: BaseException) -> None:
    raise exc


class LlmPerfSession:
    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.registry = model_registry.registry_with_overrides(settings.pyproject.get("models", {}))
        self.model_names: tuple[str, ...] = settings.models or (DEFAULT_MODEL,)
        self.specs: dict[str, ModelSpec] = {name: self._lookup(name) for name in self.model_names}
        self.gate = Gate(config, settings)
        self.pool = ServerPool(
            specs=self.specs,
            backend_for=self.backend_for,
            request_for=self._launch_request,
            launch=self._launch,
            fits=self._fits,
            progress=self.progress,
            slots=settings.max_concurrency or DEFAULT_MAX_CONCURRENCY,
            context_tokens=DEFAULT_MAX_CONTEXT,
            pinned_slots=f"--llm-max-concurrency={settings.max_concurrency}"
            if settings.max_concurrency
            else None,
            options=settings.server_options,
            attached=self.attached,
        )
        controller = config.getoption("dist", "no") != "no" and not hasattr(config, "workerinput")
        self.placement = Placement(settings, self.backend_for, self.attached, xdist_controller=controller)
        # Fixed at configure time: pytest-benchmark compares machine_info at start and at save.
        self.server_info = {name: self._server_info(name) for name in self.model_names}
        self.reports = TestReports(self.pool.label, settings)
        self._usage_errors: list[str] = []
        self._warnings: list[str] = []
        self._log_dir: Path | None = None
        self._machine_info: dict[str, Any] | None = None
        self._previous_sigterm: Any = None
        self._install_signal_handlers()
        atexit.register(self.close)

    # -- planning ---------------------------------------------------------------------------

    def _lookup(self, name: str) -> ModelSpec:
        try:
            return model_registry.lookup(name, self.registry)
        except ConfigError:
            if self.settings.backend != "openai":
                raise
            # An endpoint serves whatever names it likes: an unknown one is its served name.
            return ModelSpec(name=name, default_backend="openai")

    def backend_for(self, model: str) -> str:
        return self.settings.backend or self.specs[model].default_backend

    def base_url_for(self, model: str) -> str | None:
        """The endpoint a model is served at: ``--llm-base-url``, else its own ``base_url`` in pyproject."""
        return self.settings.base_url or self.specs[model].base_url

    def attached(self, model: str) -> bool:
        """True for a model on a server we attach to rather than start (its size is not ours to check)."""
        return self.base_url_for(model) is not None or self.backend_for(model) == "openai"

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
        bad = [a for a in marker.args if not isinstance(a, str)] + [f"{k}=" for k in marker.kwargs]
        if bad:
            # Raised by plan(): a usage error at collection, rather than a collection error here.
            self._usage_errors.append(
                f"llm_models of {definition.nodeid} takes model names, got {bad[0]!r}; "
                'write e.g. @pytest.mark.llm_models("gemma3-270m")'
            )
            return list(self.model_names)
        return [m for m in self.model_names if m in marker.args]

    def plan(self, items: list[pytest.Item]) -> None:
        """Size servers from the collected tests' ``concurrency``/token parameters.

        Literal arguments are seen only when a test runs; ``ServerPool.ensure``
        restarts a server that turns out too small then.
        """
        if self._usage_errors:
            raise pytest.UsageError(self._usage_errors[0])
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
            concurrency = max(concurrency, _int(params.get("concurrency")))
            context = max(context, _int(params.get("input_tokens")) + _int(params.get("output_tokens")))
        if self.settings.max_concurrency is None and concurrency:
            self.pool.size.slots = concurrency
        if context:
            self.pool.size.context_tokens = context

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
        self.reports.write_line(self.config, f"[llmperf] {line}")

    def _launch_request(self, spec: ModelSpec, slots: int, context_tokens: int) -> LaunchRequest:
        s = self.settings
        return LaunchRequest(
            model=spec, max_concurrency=slots, max_context=context_tokens, log_dir=self.log_dir,
            start_timeout_s=s.start_timeout_s, base_url=self.base_url_for(spec.name), api_key=s.api_key,
            auth_headers=s.auth_headers, executable=s.server_executable, extra_args=s.server_args,
            options=s.server_options, cpu_cores=self.placement.plan(spec.name).server_cores,
        )  # fmt: skip

    def _launch(self, backend_name: str, request: LaunchRequest) -> Server:
        from pytest_llmperf.servers.backends import get_backend

        return get_backend(backend_name, progress=self.progress).launch(request)

    def _fits(self, spec: ModelSpec, backend: str, slots: int, context_tokens: int) -> str | None:
        from pytest_llmperf.servers import fit

        verdict = fit.check(spec, backend, self.settings.server_options, context_tokens, slots)
        return None if verdict.fits else verdict.reason

    def start_server(self, model: str) -> Server:
        try:
            return self.pool.start(model)
        except DoesNotFit as exc:
            pytest.skip(str(exc))

    def stop_server(self, model: str) -> None:
        self.pool.stop(model)

    def check_server(self, model: str, server: Server) -> None:
        """Error fast for a model whose server already died; detect a fresh death."""
        self.pool.check(model, server)

    def close(self) -> None:
        self.pool.close()
        from pytest_llmperf.measure import workers

        workers.close_pool()

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
            ensure=lambda concurrency, context: self.pool.ensure(model, concurrency, context),
            prompt_salt=self.settings.prompt_salt,
            # --llm-adaptive aims its CI at half the tightest decode tolerance (judge.verdict).
            adaptive_target_rel_ci=self.gate.adaptive_target_rel_ci,
            # Issue 13: SLOs and capacity budgets, live progress (quiet under -q), the fit figures.
            budgets=lambda: self.gate.budgets_for(item, model),
            progress=self.progress if self.config.get_verbosity() >= 0 else None,
            spec=self.specs[model],
            client=lambda: self.placement.client_settings(model),
        )

    def record(self, item: pytest.Item, benchmark: Any, case: CaseResult) -> None:
        """Keep a finished case and write it where pytest's reports will read it."""
        info = schema.llm_info(case.run, case.outcome, engine=case.engine, engine_version=case.engine_version)
        info["prompt_salt"] = self.settings.prompt_salt
        client = dict(case.run.extra.get("client") or {})  # type: ignore[call-overload]
        client["pinning"] = self.placement.plan(case.run.model).as_json()
        cast(dict[str, Any], info)["client"] = client
        info.update(self.gate.entry_extra(item))  # case/repeat keys under --llm-repeat (judge.gate)
        e2e_s = [r.e2e_ns / 1e9 for r in case.run.measured if r.e2e_ns is not None]
        benchjson.record(benchmark, info, e2e_s)
        self.reports.measured(item, case, info)
        # On the item, so the teardown report (which junitxml reads) carries them.
        item.user_properties.extend(junit_properties(case.run, case.outcome))

    def release(self, item: pytest.Item, benchmark: Any) -> None:
        """After a test: one that measured nothing leaves pytest-benchmark nothing to warn about."""
        if not self.reports.state(item).cases:
            benchjson.release(benchmark)

    def enforce(self, item: pytest.Item) -> None:
        """After the body passed: a budget, regression or invalid measurement still fails it."""
        state = self.reports.state(item)
        failing = [c for c in state.cases if c.outcome.kind != "pass"]
        if not failing:
            return
        state.enforced = True
        reasons = [f"{c.outcome.kind}: {reason}" for c in failing for reason in c.outcome.reasons]
        pytest.fail("\n".join(reasons), pytrace=False)

    def failure(self, item: pytest.Item, exc: LlmPerfError, when: str) -> BaseException:
        """The one-line ``pytest.fail`` an ``LlmPerfError`` of a test becomes (no traceback)."""
        return self.reports.failure(item, exc, when)

    def on_report(self, item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport) -> None:
        self.reports.redact(report)
        self.reports.on_report(item, call, report)

    # -- pytest-benchmark --------------------------------------------------------------------

    def before_benchmark_save(self) -> None:
        """Before pytest-benchmark saves: if no test measured anything, say so instead of its warning."""
        bs = getattr(self.config, "_benchmarksession", None)
        if bs is not None:
            note = benchjson.nothing_to_save(bs)
            if note is not None:
                self.reports.notes.append(note)

    def update_json(self, output_json: dict[str, Any], benchmarks: list[Any]) -> None:
        unmeasured = benchjson.unmeasured_entries(benchmarks)
        if unmeasured:
            output_json[benchjson.UNMEASURED_KEY] = unmeasured

    def hide_benchmark_table(self) -> None:
        """pytest-benchmark's table of E2E seconds shows only when a ``--benchmark-*`` display
        option asks for it, or when the session has benchmarks that are not ours."""
        bs = getattr(self.config, "_benchmarksession", None)
        if bs is None or benchjson.table_asked(self.config.getoption):
            return
        if all("llm" in bench.extra_info for bench in bs.benchmarks):
            bs.quiet = True

    # -- end of session ---------------------------------------------------------------------

    def terminal_summary(self, reporter: Any) -> None:
        self.reports.terminal_summary(reporter, self.session_warnings())

    def session_warnings(self) -> list[str]:
        from pytest_llmperf import telemetry

        _reader, gpu_warning = telemetry.probe_gpu()
        return list(dict.fromkeys(([gpu_warning] if gpu_warning else []) + self._warnings))

    def warn_once(self, text: str) -> None:
        if text not in self._warnings:
            self._warnings.append(text)

    def finish(self) -> None:
        self.close()
        if hasattr(self.config, "workerinput"):
            # A pytest-xdist worker: the controller merges every worker's results and writes them.
            xdistmerge.hand_over(
                self.config, self.reports.finished, self.reports.notes, self.session_warnings()
            )
        elif self.settings.report_dir is not None:
            self.reports.write_report(self.settings.report_dir, self.progress)

    def merge_worker(self, node: Any) -> None:
        """The controller: a pytest-xdist worker went down; its results join this session's."""
        finished, notes, warnings = xdistmerge.take_over(self.config, node)
        self.reports.finished.extend(finished)
        self.reports.finished.sort(key=lambda done: done.nodeid)  # the same table whichever worker ends first
        self.reports.notes.extend(n for n in notes if n not in self.reports.notes)
        for warning in warnings:
            self.warn_once(warning)

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


def _int(value: object) -> int:
    """A collected parameter as a size: whole numbers count, anything else is left to the run."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0

"""Each ``llm_perf`` test wired to the session, and what it measured kept where pytest's reports read it.

``Recording.perf_for`` builds a test's ``LlmPerf`` on narrow callables (judge,
record, check the server, resize it, budgets, client settings); ``record``
writes a finished case into its benchmark entry, the test's report state and
its JUnit properties; ``enforce`` fails a test whose body passed but whose
measurement did not. The pytest-benchmark hooks (nothing to save, unmeasured
entries, the quiet table) and the pytest-xdist controller's merge of a
worker's results live here too.

This module wires and records; it must not measure or judge a measurement.
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import pytest

from pytest_llmperf import schema
from pytest_llmperf.errors import LlmPerfError
from pytest_llmperf.judge import paired
from pytest_llmperf.output import benchjson
from pytest_llmperf.output.report import junit_properties
from pytest_llmperf.perf import LlmPerf, Wiring
from pytest_llmperf.perf.measurer import AbSetup
from pytest_llmperf.pytest import xdistmerge
from pytest_llmperf.pytest.benchsession import benchmark_session
from pytest_llmperf.pytest.gate import Gate
from pytest_llmperf.pytest.lifecycle import ServerLifecycle
from pytest_llmperf.pytest.reporting import Reporting
from pytest_llmperf.pytest.testreport import TestReports
from pytest_llmperf.records import CaseResult, Outcome, RunResult
from pytest_llmperf.servers.base import Server


class Recording:
    """The session's per-test wiring and records; ``reporting`` collects warnings and machine info."""

    def __init__(
        self,
        config: pytest.Config,
        servers: ServerLifecycle,
        gate: Gate,
        reports: TestReports,
        reporting: Reporting,
    ) -> None:
        self.config = config
        self.settings = servers.settings
        self.servers = servers
        self.gate = gate
        self.reports = reports
        self.reporting = reporting

    # -- per test ---------------------------------------------------------------------------

    def perf_for(self, item: pytest.Item, model: str, server: Server, benchmark: Any) -> LlmPerf:
        """The fixture object for one test, wired to this session by narrow callables."""
        servers, gate = self.servers, self.gate

        def judge(result: RunResult) -> Outcome:
            try:
                return gate.judge(item, model, result, self.reporting.machine_info(), server.engine_version)
            except LlmPerfError as exc:
                raise pytest.UsageError(str(exc)) from None

        def record(case: CaseResult) -> None:
            self.record(item, benchmark, case)

        wiring = Wiring(
            model=model,
            backend=servers.backend_for(model),
            server=server,
            settings=self.settings,
            judge=judge,
            record=record,
            check_server=lambda: servers.check(model, server),
            warn=self.reporting.warn_once,
            ensure=lambda concurrency, context: servers.pool.ensure(model, concurrency, context),
            prompt_salt=self.settings.prompt_salt,
            # --llm-adaptive aims its CI at half the tightest decode tolerance (judge.verdict).
            adaptive_target_rel_ci=gate.adaptive_target_rel_ci,
            # Issue 13: SLOs and capacity budgets, live progress (quiet under -q), the fit figures.
            budgets=lambda: gate.budgets_for(item, model),
            progress=self.reporting.progress if self.config.get_verbosity() >= 0 else None,
            spec=servers.specs[model],
            client=lambda: servers.placement.client_settings(model),
        )
        key = servers.candidate_key(model)
        if key is not None:
            wiring = dataclasses.replace(wiring, ab=self._ab_setup(wiring, model, key))
        return LlmPerf(item.nodeid, wiring)

    def _ab_setup(self, baseline: Wiring, model: str, key: str) -> AbSetup:
        """The candidate side of an A/B test: its server (started on first use), checked as the baseline's."""
        servers, settings = self.servers, self.settings

        def candidate() -> Wiring:
            server = servers.candidate(model)
            return dataclasses.replace(
                baseline,
                model=server.model,
                backend=servers.backend_for(key),
                server=server,
                check_server=lambda: servers.check(key, server),
                ensure=lambda concurrency, context: servers.pool.ensure(key, concurrency, context),
                spec=servers.specs[key],
                ab=None,
            )

        comparisons = self.gate.cases_in_session * len(paired.PAIRED_METRICS)
        return AbSetup(candidate, settings.ab_blocks, settings.ab_tolerance, comparisons)

    def record(self, item: pytest.Item, benchmark: Any, case: CaseResult) -> None:
        """Keep a finished case and write it where pytest's reports will read it."""
        info = schema.llm_info(case.run, case.outcome, engine=case.engine, engine_version=case.engine_version)
        info["prompt_salt"] = self.settings.prompt_salt
        client = dict(case.run.extra.get("client") or {})  # type: ignore[call-overload]
        client["pinning"] = self.servers.placement.plan(case.run.model).as_json()
        cast(dict[str, Any], info)["client"] = client
        info.update(self.gate.entry_extra(item))  # case/repeat keys under --llm-repeat (pytest.gate)
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
        bs = benchmark_session(self.config)
        if bs is not None:
            note = benchjson.nothing_to_save(bs)
            if note is not None:
                self.reports.notes.append(note)

    @staticmethod
    def update_json(output_json: dict[str, Any], benchmarks: list[Any]) -> None:
        unmeasured = benchjson.unmeasured_entries(benchmarks)
        if unmeasured:
            output_json[benchjson.UNMEASURED_KEY] = unmeasured

    def hide_benchmark_table(self) -> None:
        """pytest-benchmark's table of E2E seconds shows only when a ``--benchmark-*`` display
        option asks for it, or when the session has benchmarks that are not ours."""
        bs = benchmark_session(self.config)
        if bs is None or benchjson.table_asked(self.config.getoption):
            return
        if all("llm" in bench.extra_info for bench in bs.benchmarks):
            bs.quiet = True

    # -- pytest-xdist ------------------------------------------------------------------------

    def merge_worker(self, node: Any) -> None:
        """The controller: a pytest-xdist worker went down; its results join this session's."""
        finished, notes, warnings = xdistmerge.take_over(self.config, node)
        self.reports.finished.extend(finished)
        self.reports.finished.sort(key=lambda done: done.nodeid)  # the same table whichever worker ends first
        self.reports.notes.extend(n for n in notes if n not in self.reports.notes)
        for warning in warnings:
            self.reporting.warn_once(warning)

"""The ``llm_perf`` fixture object: run one measured scenario, keep everything.

``LlmPerf.run`` turns keyword arguments into a ``Scenario``, measures it
against the test's server with telemetry around it, writes each request to
the JSONL log as it finishes, feeds the pytest-benchmark entry, and judges
the result against budgets and the baseline. The verdict fails the test after
its body returns (see ``LlmPerfSession.enforce``), so a test can still look at
the result; whatever was measured is recorded before anything can fail.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llmperf.errors import ConfigError, LlmPerfError, ServerDiedError
from pytest_llmperf.output import benchjson
from pytest_llmperf.output.report import junit_properties
from pytest_llmperf.output.requestlog import RequestLog
from pytest_llmperf.records import RunResult, Scenario
from pytest_llmperf.servers.base import Server

if TYPE_CHECKING:
    from pytest_llmperf.judge.verdict import Outcome
    from pytest_llmperf.session import LlmPerfSession


def _telemetry(sampler: Any, result: RunResult) -> dict[str, Any]:
    """The sampler's summary plus what needs the run too: J/token and the TTFT cross-check."""
    from pytest_llmperf import telemetry

    summary: dict[str, Any] = dict(sampler.summary())
    output_tokens = sum(r.output_tokens or 0 for r in result.measured if r.ok)
    summary["energy_j_per_output_token"] = telemetry.energy_per_token(summary, output_tokens or None)
    server_ttft = (summary.get("server_metrics") or {}).get("ttft_ms") or {}
    client_ttft = result.summary.ttft_ms
    if server_ttft.get("mean") is not None and client_ttft is not None:
        summary["ttft_cross_check"] = telemetry.cross_check_ttft(
            server_ttft["mean"],
            client_ttft.mean,
            server_requests=server_ttft.get("count"),
            client_requests=client_ttft.count,
        )
    return summary


@dataclass(frozen=True)
class TestResult:
    """One measured run of one test, with its verdict."""

    __test__ = False  # not a pytest test class

    nodeid: str
    run: RunResult
    outcome: Outcome
    engine: str


class LlmPerf:
    """What a test gets from the ``llm_perf`` fixture."""

    def __init__(
        self,
        session: LlmPerfSession,
        node: pytest.Item,
        *,
        model: str,
        backend: str,
        server: Server,
        benchmark: Any,
    ) -> None:
        self._session = session
        self._node = node
        self.model = model
        self.backend = backend
        self.server = server
        self._benchmark = benchmark
        self.results: list[RunResult] = []
        self._series: list[dict[str, Any]] = []

    def run(
        self,
        input_tokens: int = 128,
        output_tokens: int = 64,
        concurrency: int = 1,
        requests: int | None = None,
        *,
        warmup: int | None = None,
        rate: float | None = None,
        arrival: str = "poisson",
        seed: int = 0,
        timeout_s: float | None = None,
        adaptive: bool | None = None,
        target_rel_ci: float = 0.05,
    ) -> RunResult:
        """Measure one scenario and return its result (records and summary)."""
        if self.results and self._benchmark is not None:
            raise ConfigError(
                "llm_perf.run() was called twice in one test, but each test is one pytest-benchmark "
                "entry: parametrize the test instead of looping inside it"
            )
        scenario = self._scenario(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            concurrency=concurrency,
            requests=requests,
            warmup=warmup,
            rate=rate,
            arrival=arrival,
            seed=seed,
            timeout_s=timeout_s,
            adaptive=adaptive,
            target_rel_ci=target_rel_ci,
        )
        settings = self._session.settings
        self._session.check_server(self.model, self.server)
        result, died = self._measure(scenario)
        engine = getattr(self.server, "engine_version", "") or ""
        outcome = self._judge(result, engine)
        self._session.record(TestResult(self._node.nodeid, result, outcome, engine))
        # On the item, so the teardown report (which junitxml reads) carries them.
        self._node.user_properties.extend(junit_properties(result, outcome))
        self.results.append(result)
        if self._benchmark is not None:
            benchjson.record(self._benchmark, result, outcome, engine=engine)
        if settings.telemetry_series:
            self._write_series()
        if died is not None:
            raise died
        return result

    def _scenario(
        self,
        *,
        input_tokens: int,
        output_tokens: int,
        concurrency: int,
        requests: int | None,
        warmup: int | None,
        rate: float | None,
        arrival: str,
        seed: int,
        timeout_s: float | None,
        adaptive: bool | None,
        target_rel_ci: float,
    ) -> Scenario:
        for name, value in (
            ("input_tokens", input_tokens),
            ("output_tokens", output_tokens),
            ("concurrency", concurrency),
        ):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"llm_perf.run({name}={value!r}): {name} must be a whole number >= 1")
        if arrival not in ("poisson", "constant"):
            raise ConfigError(f"llm_perf.run(arrival={arrival!r}): use 'poisson' or 'constant'")
        settings = self._session.settings
        n = requests if requests is not None else max(8, 2 * concurrency)
        return Scenario(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            concurrency=concurrency,
            requests=n,
            warmup=warmup if warmup is not None else min(concurrency, 2),
            rate=rate,
            arrival=arrival,  # type: ignore[arg-type]
            seed=seed,
            timeout_s=timeout_s if timeout_s is not None else settings.request_timeout_s,
            adaptive=settings.adaptive if adaptive is None else adaptive,
            target_rel_ci=target_rel_ci,
            min_requests=min(n, max(8, concurrency)),
        )

    def _measure(self, scenario: Scenario) -> tuple[RunResult, ServerDiedError | None]:
        from pytest_llmperf import telemetry
        from pytest_llmperf.measure import runner
        from pytest_llmperf.measure.client import Target

        settings = self._session.settings
        caps = self.server.capabilities
        target = Target(
            base_url=self.server.base_url,
            model=self.server.model,
            capabilities=caps,
            headers=dict(getattr(self.server, "headers", {}) or {}),
        )
        sampler: telemetry.Sampler | None = None
        if settings.telemetry_interval_s > 0:
            sampler = telemetry.Sampler(
                interval_s=settings.telemetry_interval_s,
                server_pid=self.server.pid,
                metrics_url=self.server.base_url + caps.metrics_path if caps.metrics_path else None,
                ollama_ps_url=self.server.base_url + "/api/ps" if caps.api.startswith("ollama") else None,
                keep_series=settings.telemetry_series,
            )
        log = RequestLog.open(settings.save_requests, self._node.nodeid, self.model, self.backend)
        try:
            # Telemetry covers the measured window only: it starts when warm-up is over.
            result = runner.measure(
                target,
                scenario,
                model=self.model,
                backend=self.backend,
                on_record=log.write,
                on_measured=sampler.start if sampler is not None else None,
            )
        finally:
            log.close()
            if sampler is not None and sampler.started:
                sampler.stop()
        died: ServerDiedError | None = None
        try:
            self._session.check_server(self.model, self.server)
        except ServerDiedError as exc:
            died = exc
        if sampler is None or not sampler.started:
            return result, died
        for warning in sampler.warnings:
            self._session.warn_once(warning)
        self._series = [dict(point) for point in sampler.series()]
        return dataclasses.replace(
            result, extra={**result.extra, "telemetry": _telemetry(sampler, result)}
        ), died

    def _judge(self, result: RunResult, engine: str) -> Outcome:
        try:
            return self._session.gate.judge(
                self._node, self.model, result, self._session.machine_info(), engine
            )
        except LlmPerfError as exc:
            raise pytest.UsageError(str(exc)) from None

    def _write_series(self) -> None:
        directory = self._session.settings.save_requests or self._session.settings.report_dir
        if directory is None or not self._series:
            return
        RequestLog.write_series(directory, self._node.nodeid, self._series)

"""The ``llm_perf`` fixture object: run one measured scenario, keep everything.

``LlmPerf.run`` turns keyword arguments into a ``Scenario``, measures it
against the test's server with telemetry around it, writes each request to
the JSONL log as it finishes, judges the result and hands the finished
``CaseResult`` to its ``record`` sink. It gets everything it needs from its
constructor, the way pytest-benchmark's fixture gets ``add_stats``: the
resolved settings, the server, ``judge(result) -> Outcome``, ``record(case)``,
``check_server()`` and ``warn(text)``. It never imports ``session`` or
``plugin``; the verdict fails the test after its body returns (the session's
``enforce``), so a test can still look at the result, and whatever was
measured is recorded before anything can fail.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from pytest_llmperf.config import Settings
from pytest_llmperf.errors import ConfigError, ServerDiedError
from pytest_llmperf.output.requestlog import RequestLog
from pytest_llmperf.records import Arrival, CaseResult, Outcome, RunResult, Scenario
from pytest_llmperf.servers.base import Server

Judge = Callable[[RunResult], Outcome]
"""Budgets and baseline for this test: a result in, its verdict out."""
Sink = Callable[[CaseResult], None]
"""Where a finished case goes (the session's results, the benchmark entry, JUnit)."""

ARRIVALS: tuple[Arrival, ...] = ("poisson", "constant")


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


class LlmPerf:
    """What a test gets from the ``llm_perf`` fixture."""

    def __init__(
        self,
        *,
        nodeid: str,
        model: str,
        backend: str,
        server: Server,
        settings: Settings,
        judge: Judge,
        record: Sink,
        check_server: Callable[[], None],
        warn: Callable[[str], None],
    ) -> None:
        self.nodeid = nodeid
        self.model = model
        self.backend = backend
        self.server = server
        self._settings = settings
        self._judge = judge
        self._record = record
        self._check_server = check_server
        self._warn = warn
        self.results: list[RunResult] = []

    def run(
        self,
        input_tokens: int = 128,
        output_tokens: int = 64,
        concurrency: int = 1,
        requests: int | None = None,
        *,
        warmup: int | None = None,
        rate: float | None = None,
        arrival: Arrival = "poisson",
        seed: int = 0,
        timeout_s: float | None = None,
        adaptive: bool | None = None,
        target_rel_ci: float = 0.05,
    ) -> RunResult:
        """Measure one scenario and return its result (records and summary)."""
        if self.results:
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
        self._check_server()
        result, series, died = self._measure(scenario)
        outcome = self._judge(result)
        self.results.append(result)
        self._record(
            CaseResult(
                nodeid=self.nodeid,
                run=result,
                outcome=outcome,
                engine=self.server.engine,
                engine_version=self.server.engine_version,
            )
        )
        if self._settings.telemetry_series:
            self._write_series(series)
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
        arrival: Arrival,
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
        if arrival not in ARRIVALS:
            raise ConfigError(f"llm_perf.run(arrival={arrival!r}): use 'poisson' or 'constant'")
        n = requests if requests is not None else max(8, 2 * concurrency)
        return Scenario(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            concurrency=concurrency,
            requests=n,
            warmup=warmup if warmup is not None else min(concurrency, 2),
            rate=rate,
            arrival=arrival,
            seed=seed,
            timeout_s=timeout_s if timeout_s is not None else self._settings.request_timeout_s,
            adaptive=self._settings.adaptive if adaptive is None else adaptive,
            target_rel_ci=target_rel_ci,
            min_requests=min(n, max(8, concurrency)),
        )

    def _measure(self, scenario: Scenario) -> tuple[RunResult, list[dict[str, Any]], ServerDiedError | None]:
        from pytest_llmperf import telemetry
        from pytest_llmperf.measure import runner
        from pytest_llmperf.measure.client import Target

        settings = self._settings
        caps = self.server.capabilities
        target = Target(
            base_url=self.server.base_url,
            model=self.server.model,
            capabilities=caps,
            headers=dict(self.server.headers),
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
        log = RequestLog.open(settings.save_requests, self.nodeid, self.model, self.backend)
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
            self._check_server()
        except ServerDiedError as exc:
            died = exc
        if sampler is None or not sampler.started:
            return result, [], died
        for warning in sampler.warnings:
            self._warn(warning)
        series = [dict(point) for point in sampler.series()]
        telemetry_summary = _telemetry(sampler, result)
        return (
            dataclasses.replace(result, extra={**result.extra, "telemetry": telemetry_summary}),
            series,
            died,
        )

    def _write_series(self, series: list[dict[str, Any]]) -> None:
        directory = self._settings.save_requests or self._settings.report_dir
        if directory is None or not series:
            return
        RequestLog.write_series(directory, self.nodeid, series)

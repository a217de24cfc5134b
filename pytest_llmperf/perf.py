"""The ``llm_perf`` fixture object: run one measured scenario, keep everything.

``LlmPerf.run`` checks its arguments (each impossible one is a ``ConfigError``
naming the argument, the value and the fix, before any request), gets a
server sized for them (``ensure(concurrency, context_tokens) -> Server``,
which may restart the session's server), measures the scenario with
telemetry around it, writes each request to the JSONL log as it finishes,
judges the result and hands the finished ``CaseResult`` to its ``record``
sink. It gets everything it needs from its constructor, the way
pytest-benchmark's fixture gets ``add_stats``: the resolved settings, the
server, ``ensure``, ``judge(result) -> Outcome``, ``record(case)``,
``check_server()``, ``warn(text)`` and the prompt salt. It never imports
``session``, ``plugin`` or pytest; the verdict fails the test after its body
returns (the session's ``enforce``), so a test can still look at the result,
and whatever was measured is recorded before anything can fail.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pytest_llmperf.config import Settings
from pytest_llmperf.errors import ConfigError, ServerDiedError
from pytest_llmperf.output.requestlog import RequestLog
from pytest_llmperf.records import Arrival, CaseResult, Outcome, RunResult, Scenario
from pytest_llmperf.servers.base import Server
from pytest_llmperf.servers.pool import TooBig

if TYPE_CHECKING:
    from pytest_llmperf.measure.runner import ClientSettings

Judge = Callable[[RunResult], Outcome]
"""Budgets and baseline for this test: a result in, its verdict out."""
Sink = Callable[[CaseResult], None]
"""Where a finished case goes (the session's results, the benchmark entry, JUnit)."""
Ensure = Callable[[int, int], Server]
"""``ensure(concurrency, context_tokens)``: the test's server, with that many slots and tokens each."""

ARRIVALS: tuple[Arrival, ...] = ("poisson", "constant")


def _whole(name: str, value: object, minimum: int, fix: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"llm_perf.run({name}={value!r}): {name} must be a whole number >= {minimum}{fix}")
    return value


def _positive(name: str, value: object, what: str, fix: str) -> float:
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(f"llm_perf.run({name}={value!r}): {name} must be a number of {what} > 0; {fix}")
    return float(number)


def check_arguments(
    *,
    input_tokens: object,
    output_tokens: object,
    concurrency: object,
    requests: object,
    warmup: object,
    rate: object,
    arrival: object,
    seed: object,
    timeout_s: object,
    adaptive: object,
    target_rel_ci: object,
    default_timeout_s: float,
    default_adaptive: bool,
    default_target_rel_ci: float = 0.05,
) -> Scenario:
    """The ``Scenario`` of ``llm_perf.run``'s arguments; a ``ConfigError`` names the first impossible one."""
    n_in = _whole("input_tokens", input_tokens, 1, "; e.g. input_tokens=128")
    n_out = _whole("output_tokens", output_tokens, 1, "; e.g. output_tokens=64")
    conc = _whole("concurrency", concurrency, 1, "; e.g. concurrency=4")
    n = (
        _whole("requests", requests, 1, "; ask for at least one request")
        if requests is not None
        else max(8, 2 * conc)
    )
    warm = _whole("warmup", warmup, 0, "; 0 sends no warm-up") if warmup is not None else min(conc, 2)
    per_s = (
        None
        if rate is None
        else _positive("rate", rate, "requests per second", "leave it out for a closed loop")
    )
    if arrival not in ARRIVALS:
        raise ConfigError(f"llm_perf.run(arrival={arrival!r}): use 'poisson' or 'constant'")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"llm_perf.run(seed={seed!r}): seed must be a whole number")
    timeout = default_timeout_s
    if timeout_s is not None:
        timeout = _positive(
            "timeout_s",
            timeout_s,
            "seconds",
            f"leave it out for --llm-request-timeout ({default_timeout_s:g} s)",
        )
    if adaptive is not None and not isinstance(adaptive, bool):
        raise ConfigError(f"llm_perf.run(adaptive={adaptive!r}): adaptive is True, False or None")
    ci = default_target_rel_ci if target_rel_ci is None else target_rel_ci
    if isinstance(ci, bool) or not isinstance(ci, (int, float)) or not 0 < ci < 1:
        raise ConfigError(
            f"llm_perf.run(target_rel_ci={ci!r}): target_rel_ci is a fraction, e.g. 0.05 for 5%"
        )
    if per_s is None and n < conc:
        # A closed loop of n requests never has more than n in flight: the label would lie.
        raise ConfigError(
            f"llm_perf.run(concurrency={conc}, requests={n}): {n} requests can never have {conc} in flight; "
            f"ask for requests >= {conc}, or concurrency <= {n}"
        )
    return Scenario(
        input_tokens=n_in,
        output_tokens=n_out,
        concurrency=conc,
        requests=n,
        warmup=warm,
        rate=per_s,
        arrival=arrival,
        seed=seed,
        timeout_s=timeout,
        adaptive=default_adaptive if adaptive is None else adaptive,
        target_rel_ci=float(ci),
        min_requests=min(n, max(8, conc)),
    )


def nothing_completed(outcome: Outcome, result: RunResult) -> Outcome:
    """A run with no completed request is never a pass, whatever error budget allowed it."""
    s = result.summary
    if outcome.kind != "pass" or s.completed > 0:
        return outcome
    first = f"; first: {s.first_error}" if s.first_error else ""
    reason = f"no request completed ({s.errors} of {s.requests} failed), so nothing was measured{first}"
    return dataclasses.replace(outcome, kind="invalid", reasons=(reason,))


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
        ensure: Ensure | None = None,
        prompt_salt: str = "",
        adaptive_target_rel_ci: float = 0.05,
        client: Callable[[], ClientSettings] | None = None,
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
        self._ensure: Ensure = ensure or (lambda _concurrency, _context: server)
        self._prompt_salt = prompt_salt
        self._adaptive_target_rel_ci = adaptive_target_rel_ci
        self._client = client  # workers, connections and cores of the client (session.Placement)
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
        target_rel_ci: float | None = None,
    ) -> RunResult:
        """Measure one scenario and return its result (records and summary)."""
        if self.results:
            raise ConfigError(
                "llm_perf.run() was called twice in one test, but each test is one pytest-benchmark "
                "entry: parametrize the test instead of looping inside it"
            )
        scenario = check_arguments(
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
            default_timeout_s=self._settings.request_timeout_s,
            default_adaptive=self._settings.adaptive,
            default_target_rel_ci=self._adaptive_target_rel_ci,
        )
        self._check_machine(scenario)
        self.server = self._server_for(scenario)
        self._check_server()
        result, series, died = self._measure(scenario)
        outcome = nothing_completed(self._judge(result), result)
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

    @staticmethod
    def _check_machine(scenario: Scenario) -> None:
        from pytest_llmperf.measure import client

        problem = client.concurrency_problem(scenario.concurrency)
        if problem is not None:
            raise ConfigError(f"llm_perf.run(concurrency={scenario.concurrency}): {problem}")

    def _server_for(self, scenario: Scenario) -> Server:
        sc = scenario
        try:
            return self._ensure(sc.concurrency, sc.input_tokens + sc.output_tokens)
        except TooBig as exc:
            args = f"concurrency={sc.concurrency}" if exc.what == "slots" else (
                f"input_tokens={sc.input_tokens}, output_tokens={sc.output_tokens}"
            )  # fmt: skip
            raise ConfigError(f"llm_perf.run({args}): {exc}") from None

    def _measure(self, scenario: Scenario) -> tuple[RunResult, list[dict[str, Any]], ServerDiedError | None]:
        from pytest_llmperf import telemetry
        from pytest_llmperf.measure import runner, workers
        from pytest_llmperf.measure.client import Target
        from pytest_llmperf.telemetry.load import PsutilClientReader

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
                # Client worker processes are the client's CPU, not "others" (telemetry.load).
                client_reader=functools.partial(PsutilClientReader, extra_pids=workers.client_pids),
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
                prompt_salt=f"{self._prompt_salt}/{self.nodeid}",
                client_settings=self._client() if self._client is not None else None,
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

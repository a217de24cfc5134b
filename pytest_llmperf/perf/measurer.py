"""The one measuring object: a point (scenario and traffic) in, a named ``Measurement`` out.

``llm_perf.run``, ``sweep`` and ``capacity`` (``perf.fixture``, ``perf.sweep``,
``perf.capacity``) are ways of choosing points; all of them measure through a
``Measurer``. It gets everything from the session through one ``Wiring``
value (the way pytest-benchmark's fixture gets ``add_stats``): the resolved
settings, the server, ``ensure(concurrency, context_tokens) -> Server``
(which may restart the session's server bigger), ``judge(result) ->
Outcome``, ``record(case)``, ``check_server()``, ``warn(text)`` and the
prompt salt. It never imports the pytest package: the verdict fails the test
after its body returns, so a test can still look at the result, and whatever
was measured is recorded (``record``) before anything can fail.

``ask`` checks a call's load and traffic once (``Ask``: each impossible
argument is a ``ConfigError`` naming it, before any request); ``size`` gets
a server big enough for a point; ``measure`` runs it with telemetry, live
progress and the request log, and returns the result with its goodput
against the test's per-request limits; a server that died is part of the
``Measurement``, not an exception, so a loop can record what it measured
first and then raise it (``record``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_llmperf.config import Settings
from pytest_llmperf.errors import ConfigError, ServerDiedError, TooBig
from pytest_llmperf.judge import paired
from pytest_llmperf.judge.budgets import Budgets
from pytest_llmperf.measure import client, stats
from pytest_llmperf.measure.client import Target
from pytest_llmperf.measure.load import Load, LoadDefaults, scenario_of
from pytest_llmperf.measure.progress import LiveProgress
from pytest_llmperf.measure.traffic import Traffic, TrafficArgs, check_traffic
from pytest_llmperf.output.requestlog import RequestLog
from pytest_llmperf.records import CaseResult, Outcome, RequestRecord, RunResult, Scenario, Slo, Summary
from pytest_llmperf.servers.base import Server
from pytest_llmperf.servers.models import ModelSpec

if TYPE_CHECKING:
    from pytest_llmperf.measure.realistic import Plan
    from pytest_llmperf.measure.runner import ClientSettings
    from pytest_llmperf.telemetry import Sampler

Judge = Callable[[RunResult], Outcome]
"""Budgets and baseline for this test: a result in, its verdict out."""
Sink = Callable[[CaseResult], None]
"""Where a finished case goes (the session's results, the benchmark entry, JUnit)."""
Ensure = Callable[[int, int], Server]
"""``ensure(concurrency, context_tokens)``: the test's server, with that many slots and tokens each."""


@dataclass(frozen=True)
class Wiring:
    """What the session hands one test's measurements: its server, settings, verdict and sinks."""

    model: str
    backend: str
    server: Server
    settings: Settings
    judge: Judge
    record: Sink
    check_server: Callable[[], None]
    warn: Callable[[str], None]
    ensure: Ensure | None = None
    prompt_salt: str = ""
    adaptive_target_rel_ci: float = 0.05
    budgets: Callable[[], Budgets] = Budgets
    progress: Callable[[str], None] | None = None
    spec: ModelSpec | None = None
    client: Callable[[], ClientSettings] | None = None
    """Workers, connections and cores of the client (the session's placement)."""
    ab: AbSetup | None = None
    """The candidate of an A/B session, and how its cases are judged; ``None`` without one."""


@dataclass(frozen=True)
class AbSetup:
    """An A/B session's other side (started when a test first asks) and its block plan."""

    candidate: Callable[[], Wiring]
    blocks: int = 8
    tolerance: float = paired.DEFAULT_TOLERANCE
    comparisons: int = len(paired.PAIRED_METRICS)
    """The session's paired comparisons (cases x metrics), for Bonferroni (``judge.paired``)."""


@dataclass(frozen=True)
class Ask:
    """A call's load and traffic, the traffic checked once; ``at`` checks each point's load."""

    where: str
    load: Load
    traffic: Traffic
    defaults: LoadDefaults

    def at(self, concurrency: int, rate: float | None, requests: int | None) -> Scenario:
        """The checked ``Scenario`` of this call's load at one point."""
        scenario = scenario_of(self.load.at(concurrency, rate, requests), self.traffic.shape(), self.defaults,
                               self.where)  # fmt: skip
        problem = client.concurrency_problem(scenario.concurrency)
        if problem is not None:
            raise ConfigError(f"{self.where}(concurrency={scenario.concurrency}): {problem}")
        return scenario

    def asked(self) -> Scenario:
        """The point the call itself names (``llm_perf.run``'s)."""
        return self.at(self.load.concurrency, self.load.rate, self.load.requests)


@dataclass(frozen=True)
class Point:
    """One load to measure: its scenario and traffic, and how progress and prompts tell it apart."""

    scenario: Scenario
    traffic: Traffic
    name: str = ""
    """``sweep c=4``, ``capacity rate=2/s``; empty for ``llm_perf.run``."""
    salt: str = ""
    """Makes this point's prompts differ from the other points' of the test (``/sweep-1``)."""
    slo: Slo | None = None
    """The per-request limits goodput counts against; ``None``: the test's budget's."""


@dataclass(frozen=True)
class Measurement:
    """A measured point: its result, the telemetry series, and the server's death if it died."""

    result: RunResult
    series: tuple[dict[str, Any], ...] = ()
    died: ServerDiedError | None = None


def nothing_completed(outcome: Outcome, result: RunResult) -> Outcome:
    """A run with no completed request is never a pass, whatever error budget allowed it."""
    s = result.summary
    if outcome.kind != "pass" or s.completed > 0:
        return outcome
    first = f"; first: {s.first_error}" if s.first_error else ""
    reason = f"no request completed ({s.errors} of {s.requests} failed), so nothing was measured{first}"
    return dataclasses.replace(outcome, kind="invalid", reasons=(reason,))


class Measurer:
    """Measures a test's points against the session's server and records the finished entry."""

    def __init__(self, nodeid: str, wiring: Wiring) -> None:
        self.nodeid = nodeid
        self.wiring = wiring
        self.server = wiring.server
        self.results: list[RunResult] = []

    @property
    def backend(self) -> str:
        return self.wiring.backend

    @property
    def spec(self) -> ModelSpec | None:
        return self.wiring.spec

    def budgets(self) -> Budgets:
        return self.wiring.budgets()

    def label(self, point: str = "") -> str:
        """What live progress calls a point: the test's name, and the point's."""
        name = self.nodeid.rpartition("::")[2] or self.nodeid
        return f"{name} {point}".rstrip()

    def ask(self, where: str, load: Load, traffic: TrafficArgs) -> Ask:
        """A call's arguments checked: the traffic now, each point's load when it is asked."""
        seed = load.seed
        checked = check_traffic(
            where, traffic, seed if isinstance(seed, int) and not isinstance(seed, bool) else 0
        )
        settings = self.wiring.settings
        defaults = LoadDefaults(
            settings.request_timeout_s, settings.adaptive, self.wiring.adaptive_target_rel_ci
        )
        return Ask(where, load, checked, defaults)

    def size(self, scenario: Scenario, traffic: Traffic, where: str, context: int | None = None) -> None:
        """The server for this load: enough slots and context, restarted if it has too few."""
        sc = scenario
        needed = context or (
            sc.input_tokens + sc.output_tokens if traffic.plain else max(traffic.context_tokens(), 1)
        )
        ensure = self.wiring.ensure
        try:
            self.server = ensure(sc.concurrency, needed) if ensure is not None else self.server
        except TooBig as exc:
            args = f"concurrency={sc.concurrency}" if exc.what == "slots" else (
                f"input_tokens={sc.input_tokens}, output_tokens={sc.output_tokens}"
            )  # fmt: skip
            raise ConfigError(f"{where}({args}): {exc}") from None
        self.wiring.check_server()

    def target(self) -> Target:
        return Target(
            base_url=self.server.base_url,
            model=self.server.model,
            capabilities=self.server.capabilities,
            headers=dict(self.server.headers),
        )

    def measure(self, point: Point) -> Measurement:
        """Measure one point (telemetry, progress, request log, goodput); a dead server is in the answer."""
        from pytest_llmperf.measure import realistic, runner

        w = self.wiring
        prompt_salt = f"{w.prompt_salt}/{self.nodeid}{point.salt}"
        scenario, built = self._plan(point, prompt_salt)
        sampler = self._sampler()
        log = RequestLog.open(w.settings.save_requests, self.nodeid, w.model, self.backend)
        live = LiveProgress(w.progress, self.label(point.name), scenario)

        def on_record(record: RequestRecord) -> None:
            log.write(record)
            live.on_record(record)

        def on_measured() -> None:
            # Telemetry covers the measured window only: it starts when warm-up is over.
            if sampler is not None:
                sampler.start()
            live.start()

        client_settings = w.client() if w.client is not None else None
        try:
            if built is None:
                result = runner.measure(
                    runner.Subject(self.target(), w.model, self.backend), scenario,
                    on_record=on_record, on_measured=on_measured, prompt_salt=prompt_salt,
                    client_settings=client_settings,
                )  # fmt: skip
            else:
                # Built ahead like plain traffic (conversations aside: their later turns carry the
                # last answer), so through the same client: workers, connections, cores.
                result = realistic.measure(
                    runner.Subject(self.target(), w.model, self.backend), scenario, built,
                    on_record=on_record, on_measured=on_measured, client_settings=client_settings,
                )  # fmt: skip
        finally:
            live.stop()
            log.close()
            if sampler is not None and sampler.started:
                sampler.stop()
        return self._measured(point, scenario, result, sampler)

    def _plan(self, point: Point, prompt_salt: str) -> tuple[Scenario, Plan | None]:
        """Realistic traffic's requests, built before any clock starts; ``None`` for plain traffic."""
        from pytest_llmperf.measure import realistic

        scenario, traffic = point.scenario, point.traffic
        if traffic.plain:
            return scenario, None
        built = realistic.plan(self.target(), scenario, traffic, prompt_salt)
        if built.context_tokens > max(traffic.context_tokens(), 1):
            self.size(scenario, traffic, "llm_perf", context=built.context_tokens)
        if traffic.input is None:
            scenario = dataclasses.replace(scenario, input_tokens=built.nominal_input or 1)
        return scenario, built

    def _sampler(self) -> Sampler | None:
        """Telemetry for the server as it is now, or ``None`` with ``--llm-telemetry-interval 0``."""
        from pytest_llmperf import telemetry
        from pytest_llmperf.measure import workers
        from pytest_llmperf.telemetry.cpuload import PsutilClientReader

        settings = self.wiring.settings
        if settings.telemetry_interval_s <= 0:
            return None
        caps = self.server.capabilities
        return telemetry.Sampler(
            telemetry.SamplerConfig(
                interval_s=settings.telemetry_interval_s,
                server_pid=self.server.pid,
                metrics_url=self.server.base_url + caps.metrics_path if caps.metrics_path else None,
                ollama_ps_url=self.server.base_url + "/api/ps" if caps.api.startswith("ollama") else None,
                keep_series=settings.telemetry_series,
            ),
            # Client worker processes are the client's CPU, not "others" (telemetry.cpuload).
            telemetry.SamplerSources(
                client_reader=functools.partial(PsutilClientReader, extra_pids=workers.client_pids)
            ),
        )

    def _measured(
        self, point: Point, scenario: Scenario, result: RunResult, sampler: Sampler | None
    ) -> Measurement:
        """The run's goodput, duration and telemetry added; the server checked (a death is kept)."""
        slo = point.slo if point.slo is not None else self.budgets().slo()
        summary = stats.with_goodput(result.summary, result.records, slo)
        result = dataclasses.replace(
            result, summary=summary, extra={**result.extra, **_duration(scenario, summary)}
        )
        died: ServerDiedError | None = None
        try:
            self.wiring.check_server()
        except ServerDiedError as exc:
            died = exc
        if sampler is None or not sampler.started:
            return Measurement(result, (), died)
        for warning in sampler.warnings:
            self.wiring.warn(warning)
        series = tuple(dict(p) for p in sampler.series())
        telemetry_summary = _telemetry(sampler, result)
        return Measurement(
            dataclasses.replace(result, extra={**result.extra, "telemetry": telemetry_summary}), series, died
        )

    def record(self, measured: Measurement, paired_verdict: paired.PairedVerdict | None = None) -> Outcome:
        """Judge (with the A/B verdict, if any), record (always, before anything can fail), write the
        series; then raise a death."""
        result = measured.result
        outcome = nothing_completed(self.wiring.judge(result), result)
        if paired_verdict is not None:
            outcome = paired.fold(outcome, paired_verdict)
        self.results.append(result)
        self.wiring.record(
            CaseResult(
                nodeid=self.nodeid,
                run=result,
                outcome=outcome,
                engine=self.server.engine,
                engine_version=self.server.engine_version,
            )
        )
        settings = self.wiring.settings
        directory = settings.save_requests or settings.report_dir
        if settings.telemetry_series and directory is not None and measured.series:
            RequestLog.write_series(directory, self.nodeid, list(measured.series))
        if measured.died is not None:
            raise measured.died
        return outcome


def _telemetry(sampler: Sampler, result: RunResult) -> dict[str, Any]:
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


def _duration(scenario: Scenario, summary: Summary) -> dict[str, object]:
    """For a ``duration_s`` run: the asked duration, and whether the request cap ended it first."""
    if scenario.duration_s is None:
        return {}
    capped = summary.requests >= scenario.requests and summary.duration_s < scenario.duration_s
    return {
        "duration": {"asked_s": scenario.duration_s, "cap": scenario.requests, "cap_reached_first": capped}
    }

"""The ``llm_perf`` fixture object: one measured scenario, sweep or capacity search per test.

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

``sweep`` and ``capacity`` measure several loads with the same pieces
(``_points``, ``_size``, ``_measure``, ``_finish``); their loops live in
``sweeps``. Every measurement gets its goodput against the per-request limits
of the test's budget (``budgets()``), and a live progress line (``progress``)
while it runs; the session hands down both, and the model's ``spec`` for the
memory fit a capacity entry records.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmperf import sweeps
from pytest_llmperf.config import Settings
from pytest_llmperf.errors import ConfigError, ServerDiedError, TooBig
from pytest_llmperf.judge import capacity as capacity_search
from pytest_llmperf.judge.budgets import Budgets
from pytest_llmperf.measure import client, stats
from pytest_llmperf.measure.arguments import ARRIVALS, check_arguments  # noqa: F401 - re-exported
from pytest_llmperf.measure.client import Target
from pytest_llmperf.measure.progress import LiveProgress
from pytest_llmperf.measure.traffic import Lengths, Workload, check_workload
from pytest_llmperf.output.requestlog import RequestLog
from pytest_llmperf.records import Arrival, CaseResult, Outcome, RequestRecord, RunResult, Scenario, Slo
from pytest_llmperf.servers.base import Server
from pytest_llmperf.servers.models import ModelSpec
from pytest_llmperf.sweeps import CapacityResult, Sweep

if TYPE_CHECKING:
    from pytest_llmperf.measure.runner import ClientSettings

Judge = Callable[[RunResult], Outcome]
"""Budgets and baseline for this test: a result in, its verdict out."""
Sink = Callable[[CaseResult], None]
"""Where a finished case goes (the session's results, the benchmark entry, JUnit)."""
Ensure = Callable[[int, int], Server]
"""``ensure(concurrency, context_tokens)``: the test's server, with that many slots and tokens each."""


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
    """What a test gets from the ``llm_perf`` fixture: ``run``, ``sweep`` or ``capacity``, once."""

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
        budgets: Callable[[], Budgets] | None = None,
        progress: Callable[[str], None] | None = None,
        spec: ModelSpec | None = None,
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
        self._budgets: Callable[[], Budgets] = budgets or Budgets
        self._progress = progress
        self._spec = spec
        self._used: str | None = None
        self._client = client  # workers, connections and cores of the client (session.Placement)
        self.results: list[RunResult] = []

    # -- the three measurements ---------------------------------------------------------------

    def run(
        self,
        input_tokens: int | Lengths | None = 128,
        output_tokens: int | Lengths = 64,
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
        duration_s: float | None = None,
        dataset: str | Path | None = None,
        shared_prefix: int | None = None,
        prefix_groups: int = 1,
        turns: int = 1,
        prefix_cache: bool | None = None,
    ) -> RunResult:
        """Measure one scenario and return its result (records and summary)."""
        self._once("run")
        point = self._points(
            "llm_perf.run", input_tokens, output_tokens,
            _load(warmup, arrival, seed, timeout_s, adaptive, target_rel_ci, duration_s),
            _traffic(dataset, shared_prefix, prefix_groups, turns, prefix_cache),
        )  # fmt: skip
        scenario, workload = point(concurrency, rate, requests)
        self._size(scenario, workload, "llm_perf.run")
        result, series, died = self._measure(scenario, workload, self._label())
        self._finish(result, series, died)
        return result

    def sweep(
        self,
        input_tokens: int | Lengths | None = 128,
        output_tokens: int | Lengths = 64,
        concurrency: Sequence[int] | str | None = None,
        rate: Sequence[float] | None = None,
        requests: int | None = None,
        *,
        max_concurrency: int = 32,
        gain: float = stats.SATURATION_GAIN,
        warmup: int | None = None,
        arrival: Arrival = "poisson",
        seed: int = 0,
        timeout_s: float | None = None,
        duration_s: float | None = None,
        dataset: str | Path | None = None,
        shared_prefix: int | None = None,
        prefix_groups: int = 1,
        turns: int = 1,
        prefix_cache: bool | None = None,
    ) -> Sweep:
        """Measure load after load until the server saturates; one entry with every point and the knee.

        ``concurrency=[1, 2, 4, ...]`` or ``"auto"`` (1, 2, 4, ... up to
        ``max_concurrency``), or ``rate=[...]`` requests/s with at most
        ``max_concurrency`` in flight. Each point is measured as ``run`` would.
        """
        self._once("sweep")
        where = "llm_perf.sweep"
        axis, loads = sweeps.loads_of(where, concurrency, rate, max_concurrency)
        point = self._points(
            where, input_tokens, output_tokens,
            _load(warmup, arrival, seed, timeout_s, False, None, duration_s),
            _traffic(dataset, shared_prefix, prefix_groups, turns, prefix_cache),
        )  # fmt: skip
        points = [point(*sweeps.point_load(axis, x, max_concurrency), requests) for x in loads]
        self._size(max(points, key=lambda p: p[0].concurrency)[0], points[0][1], where)
        return sweeps.run_sweep(self, axis, loads, points, gain)

    def capacity(
        self,
        input_tokens: int | Lengths | None = 128,
        output_tokens: int | Lengths = 64,
        *,
        budget: Mapping[str, object] | None = None,
        slo_attainment: float = capacity_search.DEFAULT_SLO_ATTAINMENT,
        search: str = "concurrency",
        low: int = 1,
        high: int = 32,
        requests: int | None = None,
        max_probes: int = 12,
        rate_step: float | None = None,
        warmup: int | None = None,
        arrival: Arrival = "poisson",
        seed: int = 0,
        timeout_s: float | None = None,
        dataset: str | Path | None = None,
        shared_prefix: int | None = None,
        prefix_groups: int = 1,
        turns: int = 1,
        prefix_cache: bool | None = None,
    ) -> CapacityResult:
        """The highest concurrency (and, with ``search="rate"`` or ``"both"``, request rate) that
        meets the test's budget and ``budget``, found by a search over real measurements."""
        self._once("capacity")
        point = self._points(
            "llm_perf.capacity", input_tokens, output_tokens,
            _load(warmup, arrival, seed, timeout_s, False, None, None),
            _traffic(dataset, shared_prefix, prefix_groups, turns, prefix_cache),
        )  # fmt: skip
        return sweeps.run_capacity(
            self, point, budget=budget, slo_attainment=slo_attainment, search=search, low=low, high=high,
            requests=requests, max_probes=max_probes, rate_step=rate_step,
        )  # fmt: skip

    # -- pieces the three share (``sweeps`` calls them too) -----------------------------------

    def _once(self, kind: str) -> None:
        if self._used is not None:
            what = (
                "was called twice"
                if kind == self._used == "run"
                else f"was called after llm_perf.{self._used}()"
            )
            raise ConfigError(
                f"llm_perf.{kind}() {what} in one test, but each test is one pytest-benchmark "
                "entry: parametrize the test instead of looping inside it"
            )
        self._used = kind

    def _label(self, point: str = "") -> str:
        name = self.nodeid.rpartition("::")[2] or self.nodeid
        return f"{name} {point}".rstrip()

    def _points(
        self,
        where: str,
        input_tokens: object,
        output_tokens: object,
        load: dict[str, Any],
        traffic: dict[str, Any],
    ) -> sweeps.PointOf:
        """``point(concurrency, rate, requests)``: one load's ``Scenario`` and ``Workload``, checked."""
        seed = load["seed"]
        workload = check_workload(
            where=where, input_tokens=input_tokens, output_tokens=output_tokens,
            seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else 0, **traffic,
        )  # fmt: skip

        def point(concurrency: object, rate: object, requests: object) -> tuple[Scenario, Workload]:
            scenario = check_arguments(
                input_tokens=workload.nominal_input() or 1, output_tokens=round(workload.output.mean),
                concurrency=concurrency, requests=requests, rate=rate, turns=workload.turns, where=where,
                default_timeout_s=self._settings.request_timeout_s, default_adaptive=self._settings.adaptive,
                default_target_rel_ci=self._adaptive_target_rel_ci, **load,
            )  # fmt: skip
            problem = client.concurrency_problem(scenario.concurrency)
            if problem is not None:
                raise ConfigError(f"{where}(concurrency={scenario.concurrency}): {problem}")
            return scenario, workload

        return point

    def _size(self, scenario: Scenario, workload: Workload, where: str, context: int | None = None) -> None:
        """The server for this load: enough slots and context, restarted if it has too few."""
        sc = scenario
        needed = context or (
            sc.input_tokens + sc.output_tokens if workload.plain else max(workload.context_tokens(), 1)
        )
        try:
            self.server = self._ensure(sc.concurrency, needed)
        except TooBig as exc:
            args = f"concurrency={sc.concurrency}" if exc.what == "slots" else (
                f"input_tokens={sc.input_tokens}, output_tokens={sc.output_tokens}"
            )  # fmt: skip
            raise ConfigError(f"{where}({args}): {exc}") from None
        self._check_server()

    def _target(self) -> Target:
        return Target(
            base_url=self.server.base_url,
            model=self.server.model,
            capabilities=self.server.capabilities,
            headers=dict(self.server.headers),
        )

    def _measure(
        self, scenario: Scenario, workload: Workload, label: str, salt: str = "", slo: Slo | None = None
    ) -> tuple[RunResult, list[dict[str, Any]], ServerDiedError | None]:
        """Measure one load (telemetry, progress, request log, goodput); a dead server is returned."""
        from pytest_llmperf import telemetry
        from pytest_llmperf.measure import runner, workers
        from pytest_llmperf.measure import workload as workloads
        from pytest_llmperf.telemetry.cpuload import PsutilClientReader

        settings = self._settings
        prompt_salt = f"{self._prompt_salt}/{self.nodeid}{salt}"
        built = None
        if not workload.plain:
            built = workloads.plan(self._target(), scenario, workload, prompt_salt)
            if built.context_tokens > max(workload.context_tokens(), 1):
                self._size(scenario, workload, "llm_perf", context=built.context_tokens)
            if workload.input is None:
                scenario = dataclasses.replace(scenario, input_tokens=built.nominal_input or 1)
        caps = self.server.capabilities
        sampler: telemetry.Sampler | None = None
        if settings.telemetry_interval_s > 0:
            sampler = telemetry.Sampler(
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
        log = RequestLog.open(settings.save_requests, self.nodeid, self.model, self.backend)
        live = LiveProgress(self._progress, label, scenario)

        def on_record(record: RequestRecord) -> None:
            log.write(record)
            live.on_record(record)

        def on_measured() -> None:
            # Telemetry covers the measured window only: it starts when warm-up is over.
            if sampler is not None:
                sampler.start()
            live.start()

        try:
            if built is None:
                result = runner.measure(
                    runner.Subject(self._target(), self.model, self.backend), scenario,
                    on_record=on_record, on_measured=on_measured, prompt_salt=prompt_salt,
                    client_settings=self._client() if self._client is not None else None,
                )  # fmt: skip
            else:
                # Conversations and shared prefixes build each prompt from the last answer or the
                # pool: they run in this process, never in client workers.
                result = workloads.measure(
                    self._target(), scenario, built, model=self.model, backend=self.backend,
                    cache=workload.cache, on_record=on_record, on_measured=on_measured,
                )  # fmt: skip
        finally:
            live.stop()
            log.close()
            if sampler is not None and sampler.started:
                sampler.stop()
        slo = slo if slo is not None else self._budgets().slo()
        summary = stats.with_goodput(result.summary, result.records, slo)
        result = dataclasses.replace(
            result, summary=summary, extra={**result.extra, **_duration(scenario, summary)}
        )
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

    def _where(self, concurrency: int, context: int) -> dict[str, Any]:
        return sweeps.where_info(
            self._spec, self.backend, self._settings.server_options, concurrency, context
        )

    def _finish(
        self, result: RunResult, series: list[dict[str, Any]], died: ServerDiedError | None
    ) -> Outcome:
        """Judge, record (always, before anything can fail), write the series; then raise a death."""
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
        return outcome

    def _write_series(self, series: list[dict[str, Any]]) -> None:
        directory = self._settings.save_requests or self._settings.report_dir
        if directory is None or not series:
            return
        RequestLog.write_series(directory, self.nodeid, series)


def _duration(scenario: Scenario, summary: Any) -> dict[str, object]:
    """For a ``duration_s`` run: the asked duration, and whether the request cap ended it first."""
    if scenario.duration_s is None:
        return {}
    capped = summary.requests >= scenario.requests and summary.duration_s < scenario.duration_s
    return {
        "duration": {"asked_s": scenario.duration_s, "cap": scenario.requests, "cap_reached_first": capped}
    }


def _load(*args: object) -> dict[str, Any]:
    """The load arguments of a call, by name: what ``check_arguments`` takes besides the load itself."""
    names = ("warmup", "arrival", "seed", "timeout_s", "adaptive", "target_rel_ci", "duration_s")
    return dict(zip(names, args, strict=True))


def _traffic(*args: object) -> dict[str, Any]:
    """The traffic arguments of a call, by name: what ``traffic.check_workload`` takes."""
    return dict(
        zip(("dataset", "shared_prefix", "prefix_groups", "turns", "prefix_cache"), args, strict=True)
    )

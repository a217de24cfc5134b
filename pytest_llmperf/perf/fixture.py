"""The ``llm_perf`` fixture object: one measured scenario, sweep or capacity search per test.

Its three methods keep the keyword arguments users write; each turns them
once into typed values (``Load``: how the load is offered; ``TrafficArgs``:
what each request asks) and hands them to the ``Measurer``, which checks
them (each impossible one is a ``ConfigError`` naming the argument, the value
and the fix, before any request) and measures the points ``run`` (one),
``sweep`` (``perf.sweep``) and ``capacity`` (``perf.capacity``) choose.
Nothing here measures; it never imports the pytest package.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from pytest_llmperf.errors import ConfigError
from pytest_llmperf.judge import capacity as capacity_search
from pytest_llmperf.measure import stats
from pytest_llmperf.measure.load import Load
from pytest_llmperf.measure.traffic import Lengths, TrafficArgs
from pytest_llmperf.perf import ab, capacity, sweep
from pytest_llmperf.perf.capacity import CapacityResult, CapacitySearch
from pytest_llmperf.perf.measurer import AbSetup, Measurer, Point, Wiring
from pytest_llmperf.perf.sweep import Sweep
from pytest_llmperf.records import Arrival, RunResult
from pytest_llmperf.servers.base import Server


class LlmPerf:
    """What a test gets from the ``llm_perf`` fixture: ``run``, ``sweep`` or ``capacity``, once."""

    def __init__(self, nodeid: str, wiring: Wiring) -> None:
        self.nodeid = nodeid
        self.model = wiring.model
        self.backend = wiring.backend
        self.measurer = Measurer(nodeid, wiring)
        self._used: str | None = None

    @property
    def server(self) -> Server:
        """The test's server (a bigger one after a restart for a bigger load)."""
        return self.measurer.server

    @property
    def results(self) -> list[RunResult]:
        return self.measurer.results

    def run(  # noqa: PLR0913 - the public keyword arguments users write
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
        load = Load(concurrency, rate, requests, warmup, arrival, seed, timeout_s, adaptive, target_rel_ci,
                    duration_s)  # fmt: skip
        traffic = TrafficArgs(input_tokens, output_tokens, dataset, shared_prefix, prefix_groups, turns,
                              prefix_cache)  # fmt: skip
        m = self.measurer
        ask = m.ask("llm_perf.run", load, traffic)
        if m.wiring.ab is not None:
            return ab.run_ab(m, self._candidate(m.wiring.ab), ask)
        scenario = ask.asked()
        m.size(scenario, ask.traffic, ask.where)
        measured = m.measure(Point(scenario, ask.traffic))
        m.record(measured)
        return measured.result

    def sweep(  # noqa: PLR0913 - the public keyword arguments users write
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
        self._baseline_only(where)
        loads = sweep.loads_of(where, concurrency, rate, max_concurrency)
        load = Load(requests=requests, warmup=warmup, arrival=arrival, seed=seed, timeout_s=timeout_s,
                    adaptive=False, duration_s=duration_s)  # fmt: skip
        traffic = TrafficArgs(input_tokens, output_tokens, dataset, shared_prefix, prefix_groups, turns,
                              prefix_cache)  # fmt: skip
        return sweep.run_sweep(self.measurer, self.measurer.ask(where, load, traffic), loads, gain)

    def capacity(  # noqa: PLR0913 - the public keyword arguments users write
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
        where = "llm_perf.capacity"
        self._baseline_only(where)
        load = Load(requests=requests, warmup=warmup, arrival=arrival, seed=seed, timeout_s=timeout_s,
                    adaptive=False)  # fmt: skip
        traffic = TrafficArgs(input_tokens, output_tokens, dataset, shared_prefix, prefix_groups, turns,
                              prefix_cache)  # fmt: skip
        asked = CapacitySearch(search, low, high, max_probes, slo_attainment, rate_step)
        ask = self.measurer.ask(where, load, traffic)
        return capacity.run_capacity(self.measurer, ask, asked, budget)

    def _baseline_only(self, where: str) -> None:
        if self.measurer.wiring.ab is not None:
            self.measurer.wiring.warn(
                f"A/B: {where} measures the baseline only; the candidate is compared in llm_perf.run cases"
            )

    def _candidate(self, setup: AbSetup) -> Measurer:
        """The A/B candidate's measurer: its server is started here the first time a test needs it."""
        return Measurer(self.nodeid, setup.candidate())

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

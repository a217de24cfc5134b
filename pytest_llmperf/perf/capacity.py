"""A capacity search as one test: the highest load whose measurement meets the budget.

``llm_perf.capacity`` searches (``judge.capacity.find_capacity``) for the
highest concurrency, and with ``search="rate"`` or ``"both"`` the highest
request rate, whose measurement meets the budget (``judge.capacity.Criterion``).
Each probe is measured through the ``Measurer``, as ``llm_perf.run`` is. The
entry's figures are those at the capacity found, and ``extra_info["llm"]
["capacity"]`` keeps every probe; the gate compares the capacity run against
run (``judge.noise``). A server that dies during a probe ends the search:
what was measured is recorded, then the death is raised.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pytest_llmperf.errors import ConfigError
from pytest_llmperf.judge import budgets as budget_keys
from pytest_llmperf.judge.capacity import (
    RATE_STEPS,
    Capacity,
    Criterion,
    Probe,
    Probed,
    capacity_info,
    default_rate_step,
    find_capacity,
)
from pytest_llmperf.perf.measurer import Ask, Measurement, Measurer, Point
from pytest_llmperf.records import Distribution, RunResult, Slo
from pytest_llmperf.servers.models import ModelSpec

SEARCHES = ("concurrency", "rate", "both")


@dataclass(frozen=True)
class CapacitySearch:
    """How ``llm_perf.capacity`` searches, as typed (the defaults are its own): checked by ``check``."""

    by: str
    low: int
    high: int
    max_probes: int
    slo_attainment: float
    rate_step: float | None

    def check(self, where: str) -> None:
        """A ``ConfigError`` naming the first impossible argument of the search."""
        search, low, high, rate_step = self.by, self.low, self.high, self.rate_step
        if search not in SEARCHES:
            raise ConfigError(f"{where}(search={search!r}): use 'concurrency', 'rate' or 'both'")
        for name, value in (("low", low), ("high", high), ("max_probes", self.max_probes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{where}({name}={value!r}): {name} must be a whole number >= 1")
        if high < low:
            raise ConfigError(f"{where}(low={low}, high={high}): low must be <= high")
        attainment = self.slo_attainment
        ok = isinstance(attainment, (int, float)) and not isinstance(attainment, bool)
        if not ok or not 0 < attainment <= 1:
            raise ConfigError(f"{where}(slo_attainment={attainment!r}): a fraction, e.g. 0.99 for 99%")
        if rate_step is not None and (isinstance(rate_step, bool) or not isinstance(rate_step, (int, float))
                                      or not math.isfinite(rate_step) or rate_step <= 0):  # fmt: skip
            raise ConfigError(f"{where}(rate_step={rate_step!r}): a request rate > 0, e.g. rate_step=0.5")
        if search == "rate" and rate_step is None:
            raise ConfigError(
                f"{where}(search='rate'): give rate_step= (requests/s per step), or search='both' to start "
                "from the rate the concurrency search sustained"
            )


@dataclass(frozen=True)
class CapacityResult:
    """What ``llm_perf.capacity`` returns: the answer, the measurement there, and every probe."""

    concurrency: int | None
    rate: float | None
    at_capacity: RunResult | None
    probes: tuple[RunResult, ...]
    rate_probes: tuple[RunResult, ...]
    info: Mapping[str, Any]

    def describe(self) -> str:
        text = str(self.info.get("describe") or "")
        return text + (f"; rate capacity {self.rate:g} req/s" if self.rate is not None else "")


class _Prober:
    """Measures one probe after another at the asked points; remembers each one's telemetry series.

    After a probe whose server died, ``dead`` holds it and the search stops (``stopped``).
    """

    def __init__(self, m: Measurer, ask: Ask, criterion: Criterion, slo: Slo) -> None:
        self.m, self.ask, self.criterion, self.slo = m, ask, criterion, slo
        self.series: dict[int, tuple[dict[str, Any], ...]] = {}  # by id of the probe's result
        self.dead: Measurement | None = None

    def stopped(self) -> bool:
        return self.dead is not None

    def probe(self, name: str, load: tuple[int, float | None], requests: int | None) -> tuple[bool, Probed]:
        scenario = self.ask.at(load[0], load[1], requests)
        point = Point(scenario, self.ask.traffic, f"capacity {name}", salt=f"/capacity-{name}", slo=self.slo)
        measured = self.m.measure(point)
        if measured.died is not None:
            self.dead = measured
        self.series[id(measured.result)] = measured.series
        misses = self.criterion.misses(measured.result)
        return not misses and measured.died is None, (measured.result, misses)


def run_capacity(
    m: Measurer, ask: Ask, search: CapacitySearch, budget: Mapping[str, object] | None
) -> CapacityResult:
    """Search, record one entry (the figures at the capacity found) and return the answer."""
    where = ask.where
    search.check(where)
    if budget is not None and not isinstance(budget, Mapping):
        raise ConfigError(
            f"{where}(budget={budget!r}): a dict of budget keys, e.g. budget={{'slo_tpot_ms': 50}}"
        )
    layer = budget_keys.parse_marker((), dict(budget or {}), f"{where}(budget=...)")
    limits = budget_keys.merge_budgets(m.budgets(), layer)
    criterion = Criterion.of(limits, search.slo_attainment)
    requests = ask.load.requests
    top = ask.at(search.high, None, requests)
    m.size(top, ask.traffic, where)
    prober = _Prober(m, ask, criterion, limits.slo())
    by_concurrency, by_rate, step = _search(prober, search, requests)
    if prober.dead is not None:
        m.record(prober.dead)  # records what was measured, then raises the death
    shown = _shown(by_concurrency, by_rate)
    traffic = ask.traffic
    context = top.input_tokens + top.output_tokens if traffic.plain else traffic.context_tokens()
    info = capacity_info(
        search={"by": search.by, "low": search.low, "high": search.high, "max_probes": search.max_probes,
                "requests": requests, "rate_step": search.rate_step},
        criterion=criterion,
        by_concurrency=by_concurrency,
        by_rate=by_rate,
        rate_step=step,
        where=where_info(
            m.spec, m.backend, m.wiring.settings.server_options,
            by_concurrency.best or search.low if by_concurrency is not None else search.high, context,
        ),
    )  # fmt: skip
    result = shown.detail[0]
    entry = dataclasses.replace(result, extra={**result.extra, "capacity": info})
    m.record(Measurement(entry, prober.series.get(id(result), ()), None))
    return CapacityResult(
        concurrency=info["concurrency"],
        rate=info["rate"],
        at_capacity=entry if shown.ok else None,
        probes=tuple(p.detail[0] for p in (by_concurrency.probes if by_concurrency else ())),
        rate_probes=tuple(p.detail[0] for p in (by_rate.probes if by_rate else ())),
        info=info,
    )


def _search(
    prober: _Prober, search: CapacitySearch, requests: int | None
) -> tuple[Capacity[Probed] | None, Capacity[Probed] | None, float | None]:
    """The concurrency search, then the rate search from where it ended; stops when the server dies."""
    by_concurrency: Capacity[Probed] | None = None
    by_rate: Capacity[Probed] | None = None
    if search.by != "rate":
        by_concurrency = find_capacity(
            lambda c: prober.probe(f"c={c}", (c, None), requests),
            low=search.low, high=search.high, max_probes=search.max_probes, stopped=prober.stopped,
        )  # fmt: skip
    best: Probe[Probed] | None = by_concurrency.best_probe if by_concurrency is not None else None
    step = search.rate_step or default_rate_step(best.detail[0] if best is not None else None)
    if search.by != "concurrency" and step is not None and not prober.stopped():
        e2e = best.detail[0].summary.e2e_ms if best is not None else None

        def at_rate(k: int) -> tuple[bool, Probed]:
            rate = k * step
            return prober.probe(f"rate={rate:g}", (search.high, rate), requests or rate_requests(rate, e2e))

        by_rate = find_capacity(
            at_rate, low=1, high=RATE_STEPS, max_probes=search.max_probes, stopped=prober.stopped
        )
    return by_concurrency, by_rate, step


RATE_PROBE_LIFETIMES = 4
"""A rate probe sends requests for this many request lifetimes, so most see the steady load."""


def rate_requests(rate: float, e2e_ms: Distribution | None) -> int:
    """Requests of one rate probe: ``4 x rate x E2E`` (at least 16), E2E from the concurrency capacity.

    At a constant rate the load builds up over one request lifetime (Little's
    law: ``rate x E2E`` in flight); a probe over four lifetimes is mostly at
    that load, not in its ramp-up. Without a closed-loop E2E to go by, 16.
    """
    if e2e_ms is None:
        return 16
    return min(max(16, math.ceil(RATE_PROBE_LIFETIMES * rate * e2e_ms.p50 / 1000)), 2000)


def _shown(by_concurrency: Capacity[Probed] | None, by_rate: Capacity[Probed] | None) -> Any:
    """The probe whose figures the entry carries: the capacity's, else the rate capacity's, else the first."""
    for found in (by_concurrency, by_rate):
        if found is not None and found.best_probe is not None:
            return found.best_probe
    first = by_concurrency or by_rate
    assert first is not None
    assert first.probes
    return first.probes[0]


def where_info(
    spec: ModelSpec | None, backend: str, options: Mapping[str, str], concurrency: int, context: int
) -> dict[str, Any]:
    """The model's precision, its memory fit at this load, and the machine: the capacity table's columns."""
    from pytest_llmperf import telemetry
    from pytest_llmperf.servers import fit

    host = telemetry.machine_info()
    memory = host.get("memory_total_bytes")
    machine = f"{host.get('cpu_model') or 'unknown CPU'} x{host.get('cpu_count_logical') or '?'}" + (
        f", {memory / 1e9:.0f} GB RAM" if isinstance(memory, (int, float)) else ""
    )
    # An endpoint we attach to serves whatever it was started with: its precision is not ours to say.
    precision = fit.default_precision(backend, options) if backend != "openai" else None
    info: dict[str, Any] = {"precision": precision, "machine": machine}
    if spec is None or backend == "openai":
        info["fit"] = None
        return info
    found = fit.check(spec, backend, options, context, concurrency)
    est = found.estimate
    if found.machine.kind == "gpu":
        names: dict[str, int] = {}
        for device in found.machine.devices:
            names[device.name] = names.get(device.name, 0) + 1
        info["machine"] = " + ".join(f"{n} x {name}" for name, n in names.items())

    def gb(value: int | None) -> float | None:
        return round(value / 1e9, 3) if value is not None else None

    info["fit"] = {
        "fits": found.fits,
        "checked": found.checked,
        "concurrency": concurrency,
        "context_tokens": context,
        "weights_gb": gb(est.weights_bytes),
        "kv_cache_gb": gb(est.kv_cache_bytes),
        "overhead_gb": gb(est.overhead_bytes),
        "total_gb": gb(est.total_bytes),
        "available": found.machine.describe(),
        "reason": found.reason,
    }
    return info

"""Sweeps and capacity searches as one test each: the loop over loads, and what it records.

``llm_perf.sweep`` measures load after load (concurrencies or rates) exactly
as ``llm_perf.run`` would (the same argument checks, the server sized once for
the highest load), stops when the server saturates (``stats.saturation``:
throughput rose less than 10% over the best earlier point for two points in
a row, or median E2E reached 10x the first point's, or more than 10% of a
point's requests failed) and finds the knee (``stats.knee``: the lightest
load that no heavier one beats by more than 10% in output tok/s).

``llm_perf.capacity`` searches (``judge.capacity.find_capacity``) for the
highest concurrency, and with ``search="rate"`` or ``"both"`` the highest
request rate, whose measurement meets the budget (``judge.capacity.Criterion``).

Either is one pytest-benchmark entry. A sweep's points depend on where the
server saturated, so per-point entries would come and go between runs; the
entry's figures (and pytest-benchmark's ``stats``) are those of the first,
lightest load, which every run measures, and ``extra_info["llm"]["sweep"]``
keeps every point. A capacity entry's figures are those at the capacity it
found, and ``["capacity"]`` keeps every probe; the gate compares the capacity
and the sweep's peak throughput run against run (``judge.noise``).

This module orchestrates through the fixture object's own pieces (``Perf``);
it never imports ``session`` or pytest.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pytest_llmperf.errors import ConfigError, ServerDiedError
from pytest_llmperf.judge import budgets as budget_keys
from pytest_llmperf.judge.budgets import Budgets
from pytest_llmperf.judge.capacity import (
    RATE_STEPS,
    Capacity,
    Criterion,
    Probed,
    capacity_info,
    default_rate_step,
    find_capacity,
)
from pytest_llmperf.measure import stats
from pytest_llmperf.measure.traffic import Workload
from pytest_llmperf.records import Distribution, Outcome, RunResult, Scenario, Slo
from pytest_llmperf.schema import sweep_info
from pytest_llmperf.servers.models import ModelSpec

Measured = tuple[RunResult, list[dict[str, Any]], ServerDiedError | None]
PointOf = Callable[[object, object, object], tuple[Scenario, Workload]]
"""``point(concurrency, rate, requests)``: one load of a test's call, its arguments checked."""


class Perf(Protocol):
    """The fixture object's pieces a sweep or a search is made of (``perf.LlmPerf``)."""

    nodeid: str
    backend: str
    _spec: ModelSpec | None

    def _budgets(self) -> Budgets: ...

    def _label(self, point: str = "") -> str: ...

    def _size(
        self, scenario: Scenario, workload: Workload, where: str, context: int | None = None
    ) -> None: ...

    def _measure(
        self, scenario: Scenario, workload: Workload, label: str, salt: str = "", slo: Slo | None = None
    ) -> Measured: ...

    def _finish(
        self, result: RunResult, series: list[dict[str, Any]], died: ServerDiedError | None
    ) -> Outcome: ...

    def _where(self, concurrency: int, context: int) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Sweep:
    """What ``llm_perf.sweep`` returns: every measured point, the knee, and why it stopped."""

    axis: str
    loads: tuple[float, ...]
    points: tuple[RunResult, ...]
    knee_index: int | None
    stopped: str | None

    @property
    def knee(self) -> RunResult | None:
        return self.points[self.knee_index] if self.knee_index is not None else None

    @property
    def peak_output_tok_per_s(self) -> float | None:
        rates = [p.summary.output_tok_per_s for p in self.points if p.summary.output_tok_per_s is not None]
        return max(rates) if rates else None


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


# -- sweeps -----------------------------------------------------------------------------------------

AUTO_START = 1


def loads_of(
    where: str, concurrency: Sequence[int] | str | None, rate: Sequence[float] | None, max_concurrency: int
) -> tuple[str, tuple[float, ...]]:
    """The sweep's axis and its loads, checked: increasing concurrencies, or increasing rates."""
    if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
        raise ConfigError(f"{where}(max_concurrency={max_concurrency!r}): a whole number >= 1, e.g. 32")
    if (concurrency is None) == (rate is None):
        raise ConfigError(
            f"{where}: give concurrency=[1, 2, 4, 8] (or concurrency='auto') or rate=[1.0, 2.0, 4.0], not "
            + ("both" if concurrency is not None else "neither")
        )
    if concurrency == "auto":
        steps = int(math.log2(max_concurrency)) + 1
        return "concurrency", tuple(float(AUTO_START * 2**k) for k in range(steps))
    values = concurrency if concurrency is not None else rate
    axis = "concurrency" if concurrency is not None else "rate"
    if isinstance(values, str) or not isinstance(values, Sequence) or not values:
        raise ConfigError(f"{where}({axis}={values!r}): a list of loads, e.g. {axis}=[1, 2, 4, 8], or 'auto'")
    checked: list[float] = []
    for value in values:
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
        if not math.isfinite(number) or number <= 0 or (axis == "concurrency" and not isinstance(value, int)):
            kind = "whole numbers >= 1" if axis == "concurrency" else "request rates > 0"
            raise ConfigError(f"{where}({axis}={list(values)!r}): every load must be one of {kind}")
        checked.append(number)
    if any(b <= a for a, b in itertools.pairwise(checked)):
        raise ConfigError(f"{where}({axis}={list(values)!r}): loads must increase, e.g. {axis}=[1, 2, 4, 8]")
    return axis, tuple(checked)


def point_load(axis: str, load: float, max_concurrency: int) -> tuple[int, float | None]:
    """``(concurrency, rate)`` of a point: the concurrency, or the rate capped at ``max_concurrency``."""
    return (int(load), None) if axis == "concurrency" else (max_concurrency, load)


def _point_name(axis: str, load: float) -> str:
    return f"c={load:g}" if axis == "concurrency" else f"rate={load:g}/s"


def run_sweep(
    perf: Perf, axis: str, loads: Sequence[float], points: Sequence[tuple[Scenario, Workload]], gain: float
) -> Sweep:
    """Measure the points in order until saturation; record one entry (the first point's figures)."""
    results: list[RunResult] = []
    curve: list[stats.CurvePoint] = []
    series: list[dict[str, Any]] = []
    stopped: str | None = None
    died: ServerDiedError | None = None
    for i, (load, (scenario, workload)) in enumerate(zip(loads, points, strict=True)):
        result, point_series, died = perf._measure(
            scenario, workload, perf._label(f"sweep {_point_name(axis, load)}"), salt=f"/sweep-{i}"
        )
        results.append(result)
        series += point_series
        s = result.summary
        curve.append(
            stats.CurvePoint(load, s.output_tok_per_s, s.e2e_ms.p50 if s.e2e_ms else None, s.error_rate)
        )
        if died is not None:
            stopped = f"the server died at {_point_name(axis, load)}"
            break
        stopped = stats.saturation(curve, gain=gain)
        if stopped is not None:
            break
    knee = stats.knee(curve, gain)
    if stopped is None and knee == len(curve) - 1 and len(curve) > 1:
        # Throughput still rose at the last load asked: the knee lies beyond it, not at it.
        knee = None
        stopped = (
            f"throughput still rose at the last load ({_point_name(axis, loads[-1])}): the knee is beyond it"
        )
    info = sweep_info(axis=axis, loads=loads, points=results, knee=knee, stopped=stopped, gain=gain)
    first = results[0]
    # A later point that cannot be trusted makes the curve untrustworthy too.
    later = tuple(
        f"at {_point_name(axis, load)}: {reason}"
        for load, r in zip(loads[1:], results[1:], strict=False)
        for reason in r.invalid
    )
    entry = dataclasses.replace(first, invalid=first.invalid + later, extra={**first.extra, "sweep": info})
    perf._finish(entry, series, died)
    return Sweep(axis, tuple(loads), (entry, *results[1:]), knee, stopped)


# -- capacity ---------------------------------------------------------------------------------------

SEARCHES = ("concurrency", "rate", "both")


class _Died(Exception):
    def __init__(self, measured: Measured) -> None:
        super().__init__("server died")
        self.measured = measured


def _check(
    where: str, *, search: str, low: int, high: int, max_probes: int, slo_attainment: float,
    rate_step: float | None,
) -> None:  # fmt: skip
    if search not in SEARCHES:
        raise ConfigError(f"{where}(search={search!r}): use 'concurrency', 'rate' or 'both'")
    for name, value in (("low", low), ("high", high), ("max_probes", max_probes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}({name}={value!r}): {name} must be a whole number >= 1")
    if high < low:
        raise ConfigError(f"{where}(low={low}, high={high}): low must be <= high")
    ok = isinstance(slo_attainment, (int, float)) and not isinstance(slo_attainment, bool)
    if not ok or not 0 < slo_attainment <= 1:
        raise ConfigError(f"{where}(slo_attainment={slo_attainment!r}): a fraction, e.g. 0.99 for 99%")
    if rate_step is not None and (isinstance(rate_step, bool) or not isinstance(rate_step, (int, float))
                                  or not math.isfinite(rate_step) or rate_step <= 0):  # fmt: skip
        raise ConfigError(f"{where}(rate_step={rate_step!r}): a request rate > 0, e.g. rate_step=0.5")
    if search == "rate" and rate_step is None:
        raise ConfigError(
            f"{where}(search='rate'): give rate_step= (requests/s per step), or search='both' to start "
            "from the rate the concurrency search sustained"
        )


def run_capacity(
    perf: Perf,
    point: PointOf,
    *,
    budget: Mapping[str, object] | None,
    slo_attainment: float,
    search: str,
    low: int,
    high: int,
    requests: int | None,
    max_probes: int,
    rate_step: float | None,
) -> CapacityResult:
    """Search, record one entry (the figures at the capacity found) and return the answer."""
    where = "llm_perf.capacity"
    _check(where, search=search, low=low, high=high, max_probes=max_probes, slo_attainment=slo_attainment,
           rate_step=rate_step)  # fmt: skip
    if budget is not None and not isinstance(budget, Mapping):
        raise ConfigError(
            f"{where}(budget={budget!r}): a dict of budget keys, e.g. budget={{'slo_tpot_ms': 50}}"
        )
    layer = budget_keys.parse_marker((), dict(budget or {}), f"{where}(budget=...)")
    limits = budget_keys.merge_budgets(perf._budgets(), layer)
    criterion = Criterion.of(limits, slo_attainment)
    slo = limits.slo()
    top, workload = point(high, None, requests)
    perf._size(top, workload, where)
    kept: dict[int, list[dict[str, Any]]] = {}  # telemetry series by probe, for the one recorded

    def probe(name: str, concurrency: int, rate: float | None, n: int | None) -> tuple[bool, Probed]:
        scenario, work = point(concurrency, rate, n)
        measured = perf._measure(
            scenario, work, perf._label(f"capacity {name}"), salt=f"/capacity-{name}", slo=slo
        )
        if measured[2] is not None:
            raise _Died(measured)
        kept[id(measured[0])] = measured[1]
        misses = criterion.misses(measured[0])
        return not misses, (measured[0], misses)

    by_concurrency: Capacity[Probed] | None = None
    by_rate: Capacity[Probed] | None = None
    try:
        if search != "rate":
            by_concurrency = find_capacity(
                lambda c: probe(f"c={c}", c, None, requests), low=low, high=high, max_probes=max_probes
            )
        best = by_concurrency.best_probe if by_concurrency is not None else None
        step = rate_step or default_rate_step(best.detail[0] if best is not None else None)
        if search != "concurrency" and step is not None:
            e2e = best.detail[0].summary.e2e_ms if best is not None else None

            def at_rate(k: int) -> tuple[bool, Probed]:
                rate = k * step
                return probe(f"rate={rate:g}", high, rate, requests or rate_requests(rate, e2e))

            by_rate = find_capacity(at_rate, low=1, high=RATE_STEPS, max_probes=max_probes)
    except _Died as dead:
        result, series, died = dead.measured
        perf._finish(result, series, died)  # records what was measured, then raises the death
        assert died is not None
        raise died from None
    shown = _shown(by_concurrency, by_rate)
    context = top.input_tokens + top.output_tokens if workload.plain else workload.context_tokens()
    info = capacity_info(
        search={"by": search, "low": low, "high": high, "max_probes": max_probes, "requests": requests,
                "rate_step": rate_step},
        criterion=criterion,
        by_concurrency=by_concurrency,
        by_rate=by_rate,
        rate_step=step,
        where=perf._where(by_concurrency.best or low if by_concurrency is not None else high, context),
    )  # fmt: skip
    result = shown.detail[0]
    entry = dataclasses.replace(result, extra={**result.extra, "capacity": info})
    perf._finish(entry, kept.get(id(result), []), None)
    return CapacityResult(
        concurrency=info["concurrency"],
        rate=info["rate"],
        at_capacity=entry if shown.ok else None,
        probes=tuple(p.detail[0] for p in (by_concurrency.probes if by_concurrency else ())),
        rate_probes=tuple(p.detail[0] for p in (by_rate.probes if by_rate else ())),
        info=info,
    )


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

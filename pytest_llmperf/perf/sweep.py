"""A sweep as one test: the loop over loads, and what it records.

``llm_perf.sweep`` measures load after load (concurrencies or rates) exactly
as ``llm_perf.run`` would (the same argument checks, the server sized once for
the highest load), stops when the server saturates (``stats.saturation``:
throughput rose less than 10% over the best earlier point for two points in
a row, or median E2E reached 10x the first point's, or more than 10% of a
point's requests failed) and finds the knee (``stats.knee``: the lightest
load that no heavier one beats by more than 10% in output tok/s).

A sweep is one pytest-benchmark entry. A sweep's points depend on where the
server saturated, so per-point entries would come and go between runs; the
entry's figures (and pytest-benchmark's ``stats``) are those of the first,
lightest load, which every run measures, and ``extra_info["llm"]["sweep"]``
keeps every point; the gate compares the sweep's peak throughput run against
run (``judge.noise``).

Each point is measured through the ``Measurer``, as ``llm_perf.run`` is.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from pytest_llmperf.errors import ConfigError
from pytest_llmperf.measure import stats
from pytest_llmperf.perf.measurer import Ask, Measurement, Measurer, Point
from pytest_llmperf.records import RunResult
from pytest_llmperf.schema import sweep_info


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


# -- sweeps -----------------------------------------------------------------------------------------

AUTO_START = 1


@dataclass(frozen=True)
class Loads:
    """A sweep's loads, checked: increasing concurrencies, or increasing rates under a concurrency cap."""

    axis: str
    values: tuple[float, ...]
    max_concurrency: int

    def point(self, load: float) -> tuple[int, float | None]:
        """``(concurrency, rate)`` of a point: the concurrency, or the rate capped at ``max_concurrency``."""
        return point_load(self.axis, load, self.max_concurrency)


def loads_of(
    where: str, concurrency: Sequence[int] | str | None, rate: Sequence[float] | None, max_concurrency: int
) -> Loads:
    """The sweep's axis and its loads, checked: increasing concurrencies, or increasing rates."""
    axis, values = _axis_and_values(where, concurrency, rate, max_concurrency)
    return Loads(axis, values, max_concurrency)


def _axis_and_values(
    where: str, concurrency: Sequence[int] | str | None, rate: Sequence[float] | None, max_concurrency: int
) -> tuple[str, tuple[float, ...]]:
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


def run_sweep(m: Measurer, ask: Ask, loads: Loads, gain: float) -> Sweep:
    """Measure the points in order until saturation; record one entry (the first point's figures)."""
    axis = loads.axis
    scenarios = [ask.at(*loads.point(x), ask.load.requests) for x in loads.values]
    m.size(max(scenarios, key=lambda sc: sc.concurrency), ask.traffic, ask.where)
    measured: list[Measurement] = []
    curve: list[stats.CurvePoint] = []
    stopped: str | None = None
    for i, (load, scenario) in enumerate(zip(loads.values, scenarios, strict=True)):
        point = Point(scenario, ask.traffic, f"sweep {_point_name(axis, load)}", salt=f"/sweep-{i}")
        measured.append(m.measure(point))
        s = measured[-1].result.summary
        curve.append(
            stats.CurvePoint(load, s.output_tok_per_s, s.e2e_ms.p50 if s.e2e_ms else None, s.error_rate)
        )
        if measured[-1].died is not None:
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
            f"throughput still rose at the last load ({_point_name(axis, loads.values[-1])}): the knee is "
            "beyond it"
        )
    results = [x.result for x in measured]
    info = sweep_info(axis=axis, loads=loads.values, points=results, knee=knee, stopped=stopped, gain=gain)
    first = results[0]
    # A later point that cannot be trusted makes the curve untrustworthy too.
    later = tuple(
        f"at {_point_name(axis, load)}: {reason}"
        for load, r in zip(loads.values[1:], results[1:], strict=False)
        for reason in r.invalid
    )
    entry = dataclasses.replace(first, invalid=first.invalid + later, extra={**first.extra, "sweep": info})
    series = tuple(row for x in measured for row in x.series)
    m.record(Measurement(entry, series, measured[-1].died))
    return Sweep(axis, loads.values, (entry, *results[1:]), knee, stopped)

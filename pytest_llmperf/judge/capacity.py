"""Capacity search: the highest concurrency at which a case still meets its budget.

Sizing a deployment is this question. The search assumes the budget is met up
to some concurrency and missed above it (latency grows with load). It gallops
up from ``low`` (doubling) until a probe misses the budget or ``high`` is
reached, then bisects between the last met and the first missed concurrency.
Galloping keeps probes near the answer: a server that saturates at 6 streams
is never asked for 512.

``llm_perf.capacity`` runs it over real measurements: ``Criterion`` says
whether a probe met the budget (its limits, and with per-request SLOs an
attainment of at least 99% by default), and ``capacity_info`` is the record
in the JSON that a later run gates on (``capacity_concurrency_min``, and the
baseline comparison of ``judge.noise.compare_run_figures``).

This module is pure search logic: the caller's ``measure_at`` runs the
measurement. It must not measure, sleep or know about pytest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pytest_llmperf.judge.budgets import RUN_FIGURES, Budgets
from pytest_llmperf.records import RunResult
from pytest_llmperf.schema import point_info

T = TypeVar("T")


@dataclass(frozen=True)
class Probe(Generic[T]):
    """One measured concurrency: whether it met the budget, and what the caller returned."""

    concurrency: int
    ok: bool
    detail: T


@dataclass(frozen=True)
class Capacity(Generic[T]):
    """The result of a search.

    ``best`` is the highest concurrency that met the budget (``None`` if even
    ``low`` missed it) and ``first_miss`` the lowest that missed it (``None``
    if ``high`` still met it: capacity is at least ``high``). ``converged`` is
    false when ``max_probes`` ran out before the two were ``resolution`` apart.
    Each concurrency is probed once, so a noisy pass just above the true
    capacity is taken at its word: give the case enough requests that its
    percentiles are stable.
    """

    best: int | None
    first_miss: int | None
    converged: bool
    probes: tuple[Probe[T], ...]

    @property
    def best_probe(self) -> Probe[T] | None:
        return next((p for p in self.probes if p.concurrency == self.best and p.ok), None)

    def describe(self) -> str:
        """One line for a report: ``capacity 12 (13 misses the budget; 6 probes)``."""
        n = len(self.probes)
        if self.best is None:
            return f"capacity below {self.first_miss}: the lowest concurrency misses the budget ({n} probes)"
        if self.first_miss is None:
            return f"capacity at least {self.best}: the budget is met at the upper bound ({n} probes)"
        state = "" if self.converged else ", probe limit reached"
        return f"capacity {self.best} ({self.first_miss} misses the budget; {n} probes{state})"


def find_capacity(
    measure_at: Callable[[int], tuple[bool, T]],
    *,
    low: int = 1,
    high: int = 256,
    max_probes: int = 12,
    resolution: int = 1,
    stopped: Callable[[], bool] = lambda: False,
) -> Capacity[T]:
    """Highest concurrency in ``[low, high]`` whose measurement meets the budget.

    ``measure_at(c)`` measures at concurrency ``c`` and returns ``(met, detail)``;
    it is called at most ``max_probes`` times and never twice for one value.
    The search stops when the met and missed concurrencies are at most
    ``resolution`` apart (1: the exact answer under monotonicity), or, not
    converged, as soon as ``stopped()`` says a probe ended it (its server died).
    """
    if low < 1 or high < low:
        raise ValueError(f"capacity bounds need 1 <= low <= high, got low={low}, high={high}")
    if max_probes < 1 or resolution < 1:
        raise ValueError(f"max_probes and resolution must be >= 1, got {max_probes} and {resolution}")
    probes: list[Probe[T]] = []

    def probe(concurrency: int) -> bool:
        met, detail = measure_at(concurrency)
        probes.append(Probe(concurrency, bool(met), detail))
        return bool(met)

    if not probe(low):
        return Capacity(None, low, not stopped(), tuple(probes))
    good, bad = low, None
    while bad is None and good < high:
        if len(probes) >= max_probes or stopped():
            return Capacity(good, None, False, tuple(probes))
        nxt = min(good * 2, high)
        if probe(nxt):
            good = nxt
        else:
            bad = nxt
    if bad is None:
        return Capacity(good, None, True, tuple(probes))
    while bad - good > resolution:
        if len(probes) >= max_probes or stopped():
            return Capacity(good, bad, False, tuple(probes))
        mid = (good + bad) // 2
        if probe(mid):
            good = mid
        else:
            bad = mid
    return Capacity(good, bad, True, tuple(probes))


# -- capacity as a test: what a probe must meet, and what the JSON records ---------------------------

DEFAULT_SLO_ATTAINMENT = 0.99
"""With per-request limits (``slo_*_ms``), a probe must have at least this fraction of good requests."""
RATE_STEPS = 16
"""A rate search runs over ``k * rate_step`` for k up to this many steps."""
RATE_STEP_FRACTION = 0.25
"""Default rate step: a quarter of the request rate measured at the concurrency capacity."""


@dataclass(frozen=True)
class Criterion:
    """What a probe must meet: the budgets (less the capacity floors) and, with SLOs, an attainment."""

    budgets: Budgets
    slo_attainment: float | None

    @classmethod
    def of(cls, limits: Budgets, slo_attainment: float = DEFAULT_SLO_ATTAINMENT) -> Criterion:
        probe = limits.without(*(f"{m}_min" for m in RUN_FIGURES))
        return cls(probe, slo_attainment if limits.slo().as_dict() else None)

    def misses(self, result: RunResult) -> tuple[str, ...]:
        """Why ``result`` does not meet it (empty: it does). An untrustworthy probe never meets it."""
        reasons = [*result.invalid, *self.budgets.violations(result.summary)]
        s = result.summary
        floor = self.slo_attainment
        if s.completed == 0:
            reasons.append("no request completed")
        if floor is not None and (s.slo_attainment is None or s.slo_attainment < floor):
            got = "unknown" if s.slo_attainment is None else f"{s.slo_attainment:.1%}"
            reasons.append(f"SLO attainment {got} < {floor:.0%} ({s.good_requests} of {s.requests} good)")
        return tuple(reasons)

    def describe(self) -> dict[str, Any]:
        return {"budget": self.budgets.as_dict(), "slo_attainment_min": self.slo_attainment}


Probed = tuple[RunResult, tuple[str, ...]]
"""A probe's measurement and why it missed (empty when it met the criterion)."""


def default_rate_step(at_capacity: RunResult | None) -> float | None:
    """A quarter of the request rate the closed loop sustained at its capacity; ``None`` without one."""
    rate = at_capacity.summary.request_per_s if at_capacity is not None else None
    return round(rate * RATE_STEP_FRACTION, 4) if rate else None


def _probes(found: Capacity[Probed]) -> list[dict[str, Any]]:
    return [{**point_info(p.detail[0]), "met": p.ok, "reasons": list(p.detail[1])} for p in found.probes]


def _describe(found: Capacity[Probed]) -> str:
    """``Capacity.describe``, except when the lowest load could not be measured at all."""
    first = found.probes[0] if found.probes else None
    if found.best is None and first is not None and first.detail[0].invalid:
        return (
            f"capacity unknown: the measurement at concurrency {first.concurrency} is invalid "
            f"({first.detail[0].invalid[0]})"
        )
    return found.describe()


def capacity_info(
    *,
    search: Mapping[str, Any],
    criterion: Criterion,
    by_concurrency: Capacity[Probed] | None,
    by_rate: Capacity[Probed] | None,
    rate_step: float | None,
    where: Mapping[str, Any],
) -> dict[str, Any]:
    """``extra_info["llm"]["capacity"]``: the answer, every probe, and the point the table shows.

    ``where`` holds the model's precision, its memory fit and the machine's
    description (``perf`` knows them); ``at_capacity`` is the best probe of the
    concurrency search (else of the rate search).
    """
    best = by_concurrency.best_probe if by_concurrency is not None else None
    best_rate = by_rate.best_probe if by_rate is not None else None
    shown = best or best_rate
    info: dict[str, Any] = {
        "search": dict(search),
        **criterion.describe(),
        "slo": criterion.budgets.slo().as_dict(),
        "concurrency": by_concurrency.best if by_concurrency is not None else None,
        "concurrency_first_miss": by_concurrency.first_miss if by_concurrency is not None else None,
        "concurrency_converged": by_concurrency.converged if by_concurrency is not None else None,
        "rate": round(by_rate.best * rate_step, 4) if by_rate and by_rate.best and rate_step else None,
        "rate_step": rate_step if by_rate is not None else None,
        "rate_first_miss": round(by_rate.first_miss * rate_step, 4)
        if by_rate and by_rate.first_miss and rate_step
        else None,
        "probes": _probes(by_concurrency) if by_concurrency is not None else [],
        "rate_probes": _probes(by_rate) if by_rate is not None else [],
        "at_capacity": point_info(shown.detail[0]) if shown is not None else None,
        "describe": _describe(by_concurrency) if by_concurrency is not None else None,
        **where,
    }
    return info

"""Capacity search: the highest concurrency at which a case still meets its budget.

Sizing a deployment is this question. The search assumes the budget is met up
to some concurrency and missed above it (latency grows with load). It gallops
up from ``low`` (doubling) until a probe misses the budget or ``high`` is
reached, then bisects between the last met and the first missed concurrency.
Galloping keeps probes near the answer: a server that saturates at 6 streams
is never asked for 512.

This module is pure search logic: the caller's ``measure_at`` runs the
measurement and judges it. It must not measure, sleep or know about pytest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

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
) -> Capacity[T]:
    """Highest concurrency in ``[low, high]`` whose measurement meets the budget.

    ``measure_at(c)`` measures at concurrency ``c`` and returns ``(met, detail)``;
    it is called at most ``max_probes`` times and never twice for one value.
    The search stops when the met and missed concurrencies are at most
    ``resolution`` apart (1: the exact answer under monotonicity).
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
        return Capacity(None, low, True, tuple(probes))
    good, bad = low, None
    while bad is None and good < high:
        if len(probes) >= max_probes:
            return Capacity(good, None, False, tuple(probes))
        nxt = min(good * 2, high)
        if probe(nxt):
            good = nxt
        else:
            bad = nxt
    if bad is None:
        return Capacity(good, None, True, tuple(probes))
    while bad - good > resolution:
        if len(probes) >= max_probes:
            return Capacity(good, bad, False, tuple(probes))
        mid = (good + bad) // 2
        if probe(mid):
            good = mid
        else:
            bad = mid
    return Capacity(good, bad, True, tuple(probes))

"""Capacity search against synthetic, monotone (and one noisy) budget functions."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_llmperf.judge.capacity import find_capacity


def meets_up_to(limit: int, calls: list[int]) -> Callable[[int], tuple[bool, float]]:
    """A server whose p95 TTFT is 10 ms per stream, with the budget met up to ``limit`` streams."""

    def measure_at(concurrency: int) -> tuple[bool, float]:
        calls.append(concurrency)
        return concurrency <= limit, 10.0 * concurrency

    return measure_at


def test_gallops_then_bisects_to_the_exact_capacity() -> None:
    calls: list[int] = []
    cap = find_capacity(meets_up_to(37, calls), low=1, high=256)
    assert calls == [1, 2, 4, 8, 16, 32, 64, 48, 40, 36, 38, 37]
    assert (cap.best, cap.first_miss, cap.converged) == (37, 38, True)
    assert cap.best_probe is not None
    assert cap.best_probe.detail == 370.0
    assert cap.describe() == "capacity 37 (38 misses the budget; 12 probes)"


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 63, 64, 65, 99, 100])
def test_exact_for_every_capacity_and_never_probes_twice(limit: int) -> None:
    calls: list[int] = []
    cap = find_capacity(meets_up_to(limit, calls), low=1, high=100, max_probes=20)
    assert cap.best == limit
    assert cap.first_miss == (None if limit == 100 else limit + 1)
    assert len(calls) == len(set(calls))


def test_budget_missed_at_the_lowest_concurrency() -> None:
    calls: list[int] = []
    cap = find_capacity(meets_up_to(0, calls), low=2, high=64)
    assert calls == [2]
    assert (cap.best, cap.first_miss, cap.converged, cap.best_probe) == (None, 2, True, None)
    assert cap.describe() == "capacity below 2: the lowest concurrency misses the budget (1 probes)"


def test_budget_met_at_the_upper_bound() -> None:
    calls: list[int] = []
    cap = find_capacity(meets_up_to(1000, calls), low=1, high=100)
    assert calls == [1, 2, 4, 8, 16, 32, 64, 100]
    assert (cap.best, cap.first_miss, cap.converged) == (100, None, True)
    assert cap.describe() == "capacity at least 100: the budget is met at the upper bound (8 probes)"


def test_probe_limit_returns_the_bracket_so_far() -> None:
    calls: list[int] = []
    cap = find_capacity(meets_up_to(37, calls), low=1, high=256, max_probes=8)
    assert calls == [1, 2, 4, 8, 16, 32, 64, 48]
    assert (cap.best, cap.first_miss, cap.converged) == (32, 48, False)
    assert cap.describe() == "capacity 32 (48 misses the budget; 8 probes, probe limit reached)"
    gallop = find_capacity(meets_up_to(37, []), low=1, high=256, max_probes=3)
    assert (gallop.best, gallop.first_miss, gallop.converged) == (4, None, False)


def test_coarser_resolution_stops_earlier() -> None:
    calls: list[int] = []
    cap = find_capacity(meets_up_to(37, calls), low=1, high=256, resolution=8)
    assert calls == [1, 2, 4, 8, 16, 32, 64, 48, 40]
    assert (cap.best, cap.first_miss) == (32, 40)


def test_only_passes_below_every_miss_are_probed() -> None:
    # A budget that flips (met at 5, missed at 6 and 8) still yields one bracket.
    answers = {1: True, 2: True, 4: True, 8: False, 6: False, 5: True}
    cap = find_capacity(lambda c: (answers[c], None), low=1, high=8)
    assert [p.concurrency for p in cap.probes] == [1, 2, 4, 8, 6, 5]
    assert (cap.best, cap.first_miss) == (5, 6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"low": 0}, "capacity bounds need 1 <= low <= high, got low=0, high=256"),
        ({"low": 8, "high": 4}, "got low=8, high=4"),
        ({"max_probes": 0}, "max_probes and resolution must be >= 1, got 0 and 1"),
    ],
)
def test_bad_bounds(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        find_capacity(lambda c: (True, None), **kwargs)


def test_a_search_ends_as_soon_as_a_probe_says_stop() -> None:
    probed: list[int] = []
    dead = {"at": 8}  # the server dies during the probe at 8

    def at(c: int) -> tuple[bool, None]:
        probed.append(c)
        return c < dead["at"], None

    found = find_capacity(at, low=1, high=64, stopped=lambda: bool(probed) and probed[-1] >= dead["at"])
    assert probed == [1, 2, 4, 8]  # no probe after the one that stopped it
    assert (found.best, found.first_miss, found.converged) == (4, 8, False)
    first = find_capacity(lambda c: (False, None), low=2, high=8, stopped=lambda: True)
    assert (first.best, first.first_miss, first.converged, len(first.probes)) == (None, 2, False, 1)

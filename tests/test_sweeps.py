"""Sweep and capacity arguments: each impossible one is one line naming it and the fix."""

from __future__ import annotations

from typing import Any

import pytest
from load_support import check_load

from pytest_llmperf.errors import ConfigError
from pytest_llmperf.perf.capacity import CapacitySearch, rate_requests
from pytest_llmperf.perf.sweep import Loads, loads_of, point_load
from pytest_llmperf.records import Distribution

W = "llm_perf.sweep"


def test_the_loads_of_a_sweep() -> None:
    assert loads_of(W, "auto", None, 32) == Loads("concurrency", (1.0, 2.0, 4.0, 8.0, 16.0, 32.0), 32)
    assert loads_of(W, "auto", None, 20) == Loads("concurrency", (1.0, 2.0, 4.0, 8.0, 16.0), 20)
    assert loads_of(W, [1, 3, 5], None, 32) == Loads("concurrency", (1.0, 3.0, 5.0), 32)
    assert loads_of(W, None, [0.5, 1, 2.5], 8) == Loads("rate", (0.5, 1.0, 2.5), 8)
    assert point_load("concurrency", 4.0, 32) == (4, None)
    assert point_load("rate", 2.5, 8) == (8, 2.5)


@pytest.mark.parametrize(
    ("concurrency", "rate", "message"),
    [
        (None, None, "llm_perf.sweep: give concurrency=[1, 2, 4, 8] (or concurrency='auto') or rate="),
        ([1, 2], [1.0], "llm_perf.sweep: give concurrency=[1, 2, 4, 8] (or concurrency='auto') or rate="),
        (
            [],
            None,
            "llm_perf.sweep(concurrency=[]): a list of loads, e.g. concurrency=[1, 2, 4, 8], or 'auto'",
        ),
        ("max", None, "llm_perf.sweep(concurrency='max'): a list of loads"),
        (
            [1, 2.5],
            None,
            "llm_perf.sweep(concurrency=[1, 2.5]): every load must be one of whole numbers >= 1",
        ),
        (
            [4, 2],
            None,
            "llm_perf.sweep(concurrency=[4, 2]): loads must increase, e.g. concurrency=[1, 2, 4, 8]",
        ),
        (None, [1.0, -2.0], "llm_perf.sweep(rate=[1.0, -2.0]): every load must be one of request rates > 0"),
    ],
)
def test_a_bad_sweep_says_what_to_type(concurrency: object, rate: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        loads_of(W, concurrency, rate, 32)  # type: ignore[arg-type]
    assert str(err.value).startswith(message)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"search": "fast"}, "llm_perf.capacity(search='fast'): use 'concurrency', 'rate' or 'both'"),
        ({"low": 0}, "llm_perf.capacity(low=0): low must be a whole number >= 1"),
        ({"low": 8, "high": 4}, "llm_perf.capacity(low=8, high=4): low must be <= high"),
        ({"slo_attainment": 99}, "llm_perf.capacity(slo_attainment=99): a fraction, e.g. 0.99 for 99%"),
        ({"rate_step": 0}, "llm_perf.capacity(rate_step=0): a request rate > 0, e.g. rate_step=0.5"),
        ({"search": "rate"}, "llm_perf.capacity(search='rate'): give rate_step= (requests/s per step)"),
    ],
)
def test_a_bad_capacity_search_says_what_to_type(changes: dict[str, object], message: str) -> None:
    args: dict[str, Any] = {"search": "concurrency", "low": 1, "high": 32, "max_probes": 12,
                            "slo_attainment": 0.99, "rate_step": None, **changes}  # fmt: skip
    search = CapacitySearch(args.pop("search"), **args)
    with pytest.raises(ConfigError) as err:
        search.check("llm_perf.capacity")
    assert str(err.value).startswith(message)


def test_a_rate_probe_runs_four_request_lifetimes() -> None:
    e2e = Distribution(1, 350.0, 0.0, 350.0, 350.0, 350.0, 350.0, 350.0, 350.0)
    assert rate_requests(20.0, e2e) == 28  # 4 x 20/s x 0.35 s
    assert rate_requests(2.0, e2e) == 16  # at least 16
    assert rate_requests(20.0, None) == 16


BASE: dict[str, object] = {
    "input_tokens": 64, "output_tokens": 16, "concurrency": 2, "requests": None, "warmup": None,
    "rate": None, "arrival": "poisson", "seed": 0, "timeout_s": None, "adaptive": None,
    "target_rel_ci": None, "default_timeout_s": 300.0, "default_adaptive": False,
}  # fmt: skip


def test_a_duration_run_builds_prompts_for_its_cap() -> None:
    closed = check_load(**{**BASE, "duration_s": 30})
    assert (closed.duration_s, closed.requests) == (30.0, 600)  # 10 requests/s per slot
    opened = check_load(**{**BASE, "duration_s": 30, "rate": 2.0, "concurrency": 8})
    assert opened.requests == 60 + 31 + 8  # the expected arrivals and a Poisson tail of 4 sd
    with pytest.raises(
        ConfigError, match=r"llm_perf.run\(duration_s=0\): duration_s must be a number of seconds"
    ):
        check_load(**{**BASE, "duration_s": 0})


def test_conversations_count_requests_in_turns() -> None:
    chat = check_load(**{**BASE, "turns": 3})
    assert (chat.requests, chat.turns) == (24, 3)  # 8 conversations of 3 turns
    with pytest.raises(
        ConfigError, match=r"6 requests are 2 conversations, which can never have 4 in flight"
    ):
        check_load(**{**BASE, "concurrency": 4, "requests": 6, "turns": 3})
    with pytest.raises(ConfigError, match="conversations run in a closed loop; leave out rate"):
        check_load(**{**BASE, "rate": 1.0, "turns": 2})
    assert check_load(**{**BASE, "where": "llm_perf.sweep", "turns": 1}).turns == 1

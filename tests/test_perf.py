"""``llm_perf.run``'s arguments: each impossible one is one line naming it, its value and the fix."""

from __future__ import annotations

import dataclasses
import math

import pytest
from load_support import check_load

from pytest_llmperf.errors import ConfigError
from pytest_llmperf.perf import nothing_completed
from pytest_llmperf.records import Outcome, RequestRecord, RunResult, Scenario, Summary

GOOD: dict[str, object] = {
    "input_tokens": 128,
    "output_tokens": 64,
    "concurrency": 4,
    "requests": None,
    "warmup": None,
    "rate": None,
    "arrival": "poisson",
    "seed": 0,
    "timeout_s": None,
    "adaptive": None,
    "target_rel_ci": 0.05,
    "default_timeout_s": 300.0,
    "default_adaptive": False,
}


def scenario(**changes: object) -> Scenario:
    return check_load(**{**GOOD, **changes})


def test_the_defaults_make_the_scenario_they_always_made() -> None:
    assert scenario() == Scenario(128, 64, 4, requests=8, warmup=2, timeout_s=300.0, min_requests=8)
    assert scenario(concurrency=8).requests == 16
    assert scenario(timeout_s=5, rate=2, concurrency=16, requests=4).timeout_s == 5.0  # open loop: a cap


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"requests": 0},
         "llm_perf.run(requests=0): requests must be a whole number >= 1; ask for at least one request"),
        ({"input_tokens": 0},
         "llm_perf.run(input_tokens=0): input_tokens must be a whole number >= 1; e.g. input_tokens=128"),
        ({"output_tokens": True},
         "llm_perf.run(output_tokens=True): output_tokens must be a whole number >= 1;"),
        ({"concurrency": 2.5}, "llm_perf.run(concurrency=2.5): concurrency must be a whole number >= 1;"),
        ({"input_tokens": "64"},
         "llm_perf.run(input_tokens='64'): input_tokens must be a whole number >= 1;"),
        ({"warmup": -1}, "llm_perf.run(warmup=-1): warmup must be a whole number >= 0; 0 sends no warm-up"),
        ({"timeout_s": 0},
         "llm_perf.run(timeout_s=0): timeout_s must be a number of seconds > 0; "
         "leave it out for --llm-request-timeout (300 s)"),
        ({"timeout_s": math.inf}, "llm_perf.run(timeout_s=inf): timeout_s must be a number of seconds > 0;"),
        ({"rate": -1},
         "llm_perf.run(rate=-1): rate must be a number of requests per second > 0; "
         "leave it out for a closed loop"),
        ({"rate": math.nan}, "llm_perf.run(rate=nan): rate must be"),
        ({"rate": "fast"}, "llm_perf.run(rate='fast'): rate must be"),
        ({"arrival": "burst"}, "llm_perf.run(arrival='burst'): use 'poisson' or 'constant'"),
        ({"seed": 1.5}, "llm_perf.run(seed=1.5): seed must be a whole number"),
        ({"adaptive": "yes"}, "llm_perf.run(adaptive='yes'): adaptive is True, False or None"),
        ({"target_rel_ci": 5},
         "llm_perf.run(target_rel_ci=5): target_rel_ci is a fraction, e.g. 0.05 for 5%"),
        (
            {"concurrency": 8, "requests": 4},
            "llm_perf.run(concurrency=8, requests=4): 4 requests can never have 8 in flight; "
            "ask for requests >= 8, or concurrency <= 4",
        ),
    ],
)  # fmt: skip
def test_an_impossible_argument_is_refused_with_a_sentence(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        scenario(**changes)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def summary(completed: int, errors: int, first_error: str | None) -> Summary:
    return Summary(
        requests=completed + errors, completed=completed, errors=errors, duration_s=1.0, ttft_ms=None,
        itl_ms=None, tpot_ms=None, e2e_ms=None, queue_ms=None, request_per_s=None, output_tok_per_s=None,
        total_tok_per_s=None, error_rate=errors / (completed + errors), input_tokens_mean=None,
        output_tokens_mean=None, output_length_misses=0, first_error=first_error,
    )  # fmt: skip


def test_a_run_that_completed_nothing_is_never_a_pass() -> None:
    record = RequestRecord("r", "s", 1, 1, 0, 0, 0, error="HTTP 503: overloaded")
    failed = RunResult("m", "openai", Scenario(1, 1), (record,), summary(0, 8, "HTTP 503: overloaded"))
    assert nothing_completed(Outcome("pass"), failed) == Outcome(
        "invalid",
        ("no request completed (8 of 8 failed), so nothing was measured; first: HTTP 503: overloaded",),
    )
    budget = Outcome("fail-budget", ("8 of 8 requests failed (...)",))
    assert nothing_completed(budget, failed) == budget  # a failing verdict says more already
    done = dataclasses.replace(failed, summary=summary(1, 7, "HTTP 503: overloaded"))
    assert nothing_completed(Outcome("pass"), done) == Outcome("pass")

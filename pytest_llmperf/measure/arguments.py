"""``llm_perf.run``'s load arguments, checked into a ``Scenario`` before any request is sent.

Each impossible argument is a ``ConfigError`` that names it, its value and the
fix (``where`` names the call: ``llm_perf.run``, ``llm_perf.sweep``,
``llm_perf.capacity``). Pure: it must not talk to a server.
"""

from __future__ import annotations

import math

from pytest_llmperf.errors import ConfigError
from pytest_llmperf.records import Arrival, Scenario

ARRIVALS: tuple[Arrival, ...] = ("poisson", "constant")


def _whole(where: str, name: str, value: object, minimum: int, fix: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}({name}={value!r}): {name} must be a whole number >= {minimum}{fix}")
    return value


def _positive(where: str, name: str, value: object, what: str, fix: str) -> float:
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(f"{where}({name}={value!r}): {name} must be a number of {what} > 0; {fix}")
    return float(number)


DURATION_REQUESTS_PER_SLOT_S = 10
"""A closed-loop ``duration_s`` run without ``requests`` builds prompts for 10 requests per slot per second.

Prompts are built before the clock starts (none is sent during the run), so
a duration run has a cap. This one lasts the whole duration unless requests
take under 100 ms; the JSON's ``duration.cap_reached_first`` says when the
cap ended a run early, and ``requests=`` raises it.
"""
DURATION_CAP_MAX = 20_000


def _duration_cap(concurrency: int, rate: float | None, duration_s: float) -> int:
    """Requests to build for a duration run: a Poisson tail above the arrivals expected, or 10/s per slot."""
    if rate is not None:
        expected = rate * duration_s
        return math.ceil(expected + 4 * math.sqrt(expected)) + 8
    return min(max(64, math.ceil(DURATION_REQUESTS_PER_SLOT_S * concurrency * duration_s)), DURATION_CAP_MAX)


def check_arguments(
    *,
    input_tokens: object,
    output_tokens: object,
    concurrency: object,
    requests: object,
    warmup: object,
    rate: object,
    arrival: object,
    seed: object,
    timeout_s: object,
    adaptive: object,
    target_rel_ci: object,
    default_timeout_s: float,
    default_adaptive: bool,
    default_target_rel_ci: float = 0.05,
    duration_s: object = None,
    turns: int = 1,
    where: str = "llm_perf.run",
) -> Scenario:
    """The ``Scenario`` of ``llm_perf.run``'s arguments; a ``ConfigError`` names the first impossible one."""
    n_in = _whole(where, "input_tokens", input_tokens, 1, "; e.g. input_tokens=128")
    n_out = _whole(where, "output_tokens", output_tokens, 1, "; e.g. output_tokens=64")
    conc = _whole(where, "concurrency", concurrency, 1, "; e.g. concurrency=4")
    per_s = (
        None
        if rate is None
        else _positive(where, "rate", rate, "requests per second", "leave it out for a closed loop")
    )
    duration = (
        None
        if duration_s is None
        else _positive(where, "duration_s", duration_s, "seconds", "leave it out to run a number of requests")
    )
    if requests is not None:
        n = _whole(where, "requests", requests, 1, "; ask for at least one request")
    elif duration is not None:
        n = _duration_cap(conc, per_s, duration)
    else:
        n = max(8, 2 * conc) * turns
    warm = _whole(where, "warmup", warmup, 0, "; 0 sends no warm-up") if warmup is not None else min(conc, 2)
    if arrival not in ARRIVALS:
        raise ConfigError(f"{where}(arrival={arrival!r}): use 'poisson' or 'constant'")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"{where}(seed={seed!r}): seed must be a whole number")
    timeout = default_timeout_s
    if timeout_s is not None:
        timeout = _positive(
            where,
            "timeout_s",
            timeout_s,
            "seconds",
            f"leave it out for --llm-request-timeout ({default_timeout_s:g} s)",
        )
    if adaptive is not None and not isinstance(adaptive, bool):
        raise ConfigError(f"{where}(adaptive={adaptive!r}): adaptive is True, False or None")
    ci = default_target_rel_ci if target_rel_ci is None else target_rel_ci
    if isinstance(ci, bool) or not isinstance(ci, (int, float)) or not 0 < ci < 1:
        raise ConfigError(f"{where}(target_rel_ci={ci!r}): target_rel_ci is a fraction, e.g. 0.05 for 5%")
    if turns > 1 and per_s is not None:
        raise ConfigError(
            f"{where}(turns={turns}, rate={rate!r}): conversations run in a closed loop; leave out rate"
        )
    conversations = -(-n // turns)
    if per_s is None and conversations < conc:
        # A closed loop of n requests never has more than n in flight: the label would lie.
        if turns > 1:
            raise ConfigError(
                f"{where}(concurrency={conc}, requests={n}, turns={turns}): {n} requests are {conversations} "
                f"conversations, which can never have {conc} in flight; ask for requests >= {conc * turns}"
            )
        raise ConfigError(
            f"{where}(concurrency={conc}, requests={n}): {n} requests can never have {conc} in flight; "
            f"ask for requests >= {conc}, or concurrency <= {n}"
        )
    return Scenario(
        input_tokens=n_in,
        output_tokens=n_out,
        concurrency=conc,
        requests=n,
        warmup=warm,
        rate=per_s,
        arrival=arrival,
        seed=seed,
        timeout_s=timeout,
        adaptive=default_adaptive if adaptive is None else adaptive,
        target_rel_ci=float(ci),
        min_requests=min(n, max(8, conc)),
        duration_s=duration,
        turns=turns,
    )

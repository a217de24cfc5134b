"""What a user asks of the load, as a value, and its check into a ``Scenario``.

``Load`` holds ``llm_perf.run``'s load arguments as the user typed them (how
many in flight or how fast, how many requests, warm-up, arrival, seed,
timeouts, adaptivity, duration); ``scenario_of`` checks them, with the
request shape the traffic gives (``Shape``) and the session's defaults
(``LoadDefaults``), into the ``Scenario`` that is measured. Each impossible
argument is a ``ConfigError`` that names it, its value and the fix (``where``
names the call: ``llm_perf.run``, ``llm_perf.sweep``, ``llm_perf.capacity``).
Pure: it must not talk to a server.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Load:
    """The load a test asks for, as typed: checked by ``scenario_of``, never before.

    ``concurrency``, ``rate`` and ``requests`` are one point's load; a sweep or a
    capacity search asks the same ``Load`` at other points (``at``).
    """

    concurrency: int = 1
    rate: float | None = None
    requests: int | None = None
    warmup: int | None = None
    arrival: Arrival = "poisson"
    seed: int = 0
    timeout_s: float | None = None
    adaptive: bool | None = None
    target_rel_ci: float | None = None
    duration_s: float | None = None

    def at(self, concurrency: int, rate: float | None, requests: int | None) -> Load:
        """The same load at another point: these three change, the rest is the test's."""
        return dataclasses.replace(self, concurrency=concurrency, rate=rate, requests=requests)


@dataclass(frozen=True)
class LoadDefaults:
    """The session's values for a load argument left out (``--llm-request-timeout``, ``--llm-adaptive``)."""

    timeout_s: float
    adaptive: bool
    target_rel_ci: float = 0.05


@dataclass(frozen=True)
class Shape:
    """The request shape a scenario is labelled with: the traffic's nominal lengths and its turns."""

    input_tokens: int
    output_tokens: int
    turns: int = 1


def scenario_of(load: Load, shape: Shape, defaults: LoadDefaults, where: str = "llm_perf.run") -> Scenario:
    """The ``Scenario`` of one load; a ``ConfigError`` names the first impossible argument."""
    n_in = _whole(where, "input_tokens", shape.input_tokens, 1, "; e.g. input_tokens=128")
    n_out = _whole(where, "output_tokens", shape.output_tokens, 1, "; e.g. output_tokens=64")
    conc = _whole(where, "concurrency", load.concurrency, 1, "; e.g. concurrency=4")
    rate, duration_s, turns = load.rate, load.duration_s, shape.turns
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
    if load.requests is not None:
        n = _whole(where, "requests", load.requests, 1, "; ask for at least one request")
    elif duration is not None:
        n = _duration_cap(conc, per_s, duration)
    else:
        n = max(8, 2 * conc) * turns
    warmup = load.warmup
    warm = _whole(where, "warmup", warmup, 0, "; 0 sends no warm-up") if warmup is not None else min(conc, 2)
    if load.arrival not in ARRIVALS:
        raise ConfigError(f"{where}(arrival={load.arrival!r}): use 'poisson' or 'constant'")
    if isinstance(load.seed, bool) or not isinstance(load.seed, int):
        raise ConfigError(f"{where}(seed={load.seed!r}): seed must be a whole number")
    timeout = defaults.timeout_s
    if load.timeout_s is not None:
        timeout = _positive(
            where,
            "timeout_s",
            load.timeout_s,
            "seconds",
            f"leave it out for --llm-request-timeout ({defaults.timeout_s:g} s)",
        )
    if load.adaptive is not None and not isinstance(load.adaptive, bool):
        raise ConfigError(f"{where}(adaptive={load.adaptive!r}): adaptive is True, False or None")
    ci = defaults.target_rel_ci if load.target_rel_ci is None else load.target_rel_ci
    if isinstance(ci, bool) or not isinstance(ci, (int, float)) or not 0 < ci < 1:
        raise ConfigError(f"{where}(target_rel_ci={ci!r}): target_rel_ci is a fraction, e.g. 0.05 for 5%")
    _check_in_flight(where, conc, n, load.rate, turns)
    return Scenario(
        input_tokens=n_in,
        output_tokens=n_out,
        concurrency=conc,
        requests=n,
        warmup=warm,
        rate=per_s,
        arrival=load.arrival,
        seed=load.seed,
        timeout_s=timeout,
        adaptive=defaults.adaptive if load.adaptive is None else load.adaptive,
        target_rel_ci=float(ci),
        min_requests=min(n, max(8, conc)),
        duration_s=duration,
        turns=turns,
    )


def _check_in_flight(where: str, conc: int, n: int, rate: float | None, turns: int) -> None:
    """A closed loop of n requests never has more than n in flight: the label would lie."""
    if turns > 1 and rate is not None:
        raise ConfigError(
            f"{where}(turns={turns}, rate={rate!r}): conversations run in a closed loop; leave out rate"
        )
    conversations = -(-n // turns)
    if rate is not None or conversations >= conc:
        return
    if turns > 1:
        raise ConfigError(
            f"{where}(concurrency={conc}, requests={n}, turns={turns}): {n} requests are {conversations} "
            f"conversations, which can never have {conc} in flight; ask for requests >= {conc * turns}"
        )
    raise ConfigError(
        f"{where}(concurrency={conc}, requests={n}): {n} requests can never have {conc} in flight; "
        f"ask for requests >= {conc}, or concurrency <= {n}"
    )

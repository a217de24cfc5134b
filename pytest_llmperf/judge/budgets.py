"""Latency and throughput budgets: parsing, presets and precedence.

A budget key is ``<metric>_<stat>`` and carries its direction in its name:

* latency ceilings ``{ttft,itl,tpot,e2e}_ms_{p50,p90,p95,p99,mean,max}``:
  the observed statistic must not exceed the limit;
* throughput floors ``{output_tok_per_s,total_tok_per_s,request_per_s}_min``:
  the run's aggregate rate must not fall below the limit;
* ``error_rate_max``: the fraction of failed requests must not exceed it;
* per-request limits ``slo_ttft_ms``, ``slo_tpot_ms``, ``slo_e2e_ms``: they
  fail nothing by themselves, they say which requests are *good* (vLLM's
  ``--goodput``), and ``slo_attainment_min``, ``goodput_rps_min`` and
  ``goodput_tok_per_s_min`` are floors on what they count;
* ``capacity_concurrency_min``, ``capacity_rate_min``: floors on what
  ``llm_perf.capacity`` found (one number per run, not in ``Summary``: the
  caller hands them in as ``run_figures``; tests without a capacity search
  ignore them, so one ``--llm-budget`` can cover a whole session).

Budgets come from three places, parsed here into ``Budgets`` layers and merged
with :func:`merge_budgets` (command line > marker > pyproject > ``DEFAULTS``, per
key). The default layer holds one budget, ``error_rate_max=0``: a failed request
fails the test unless a budget raises the limit (or clears it with ``off``) on
purpose. The layers come from:
marker arguments (``@pytest.mark.llm_budget("mlperf-llama3.1-8b",
ttft_ms_p95=500)``), pyproject tables (``[tool.llmperf.budgets."<model>"]``)
and ``--llm-budget KEY=VALUE`` strings. A layer may clear a key set by a lower
one with the value ``off`` (or ``None`` in a marker).

Every mistake raises ``ConfigError`` with a sentence that says what to type.
This module only parses and checks numbers against a ``Summary``; it must not
read files, know about pytest, or decide outcomes (that is ``verdict``).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pytest_llmperf.errors import ConfigError
from pytest_llmperf.records import Slo, Summary

Direction = Literal["max", "min", "per_request"]
"""``max``: the observed value must stay at or below the limit; ``min``: at or above it;
``per_request``: a limit each request is counted against (an SLO), not a limit on the run."""

LATENCY_METRICS: tuple[str, ...] = ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms")
LATENCY_STATS: tuple[str, ...] = ("p50", "p90", "p95", "p99", "mean", "max")
RATE_METRICS: tuple[str, ...] = ("output_tok_per_s", "total_tok_per_s", "request_per_s")
SLO_KEYS: dict[str, str] = {"slo_ttft_ms": "ttft_ms", "slo_tpot_ms": "tpot_ms", "slo_e2e_ms": "e2e_ms"}
"""Per-request limit keys -> the ``Slo`` field each sets."""
GOODPUT_METRICS: tuple[str, ...] = ("slo_attainment", "goodput_rps", "goodput_tok_per_s")
RUN_FIGURES: tuple[str, ...] = ("capacity_concurrency", "capacity_rate")
"""Floors on one number per run that ``Summary`` does not hold (see ``Budgets.violations``)."""

UNITS: dict[str, str] = {
    "ttft_ms": "ms",
    "itl_ms": "ms",
    "tpot_ms": "ms",
    "e2e_ms": "ms",
    "output_tok_per_s": "tok/s",
    "total_tok_per_s": "tok/s",
    "request_per_s": "req/s",
    "error_rate": "",
    "slo_attainment": "",
    "goodput_rps": "req/s",
    "goodput_tok_per_s": "tok/s",
    "capacity_concurrency": "",
    "capacity_rate": "req/s",
    "slo_ttft_ms": "ms",
    "slo_tpot_ms": "ms",
    "slo_e2e_ms": "ms",
}


def _key_table() -> dict[str, tuple[str, str | None, Direction]]:
    table: dict[str, tuple[str, str | None, Direction]] = {}
    for metric in LATENCY_METRICS:
        for stat in LATENCY_STATS:
            table[f"{metric}_{stat}"] = (metric, stat, "max")
    for metric in RATE_METRICS:
        table[f"{metric}_min"] = (metric, None, "min")
    table["error_rate_max"] = ("error_rate", None, "max")
    for key in SLO_KEYS:
        table[key] = (key, None, "per_request")
    for metric in (*GOODPUT_METRICS, *RUN_FIGURES):
        table[f"{metric}_min"] = (metric, None, "min")
    return table


KEYS: dict[str, tuple[str, str | None, Direction]] = _key_table()
"""Every valid budget key -> (metric, statistic or None for a run-level rate, direction)."""

# MLPerf Inference v5.x server-scenario latency constraints (TTFT p99, TPOT p99).
PRESETS: dict[str, dict[str, float]] = {
    "mlperf-llama3.1-8b": {"ttft_ms_p99": 2000.0, "tpot_ms_p99": 100.0},
    "mlperf-llama3.1-8b-interactive": {"ttft_ms_p99": 500.0, "tpot_ms_p99": 30.0},
    "mlperf-llama2-70b": {"ttft_ms_p99": 2000.0, "tpot_ms_p99": 200.0},
    "mlperf-llama2-70b-interactive": {"ttft_ms_p99": 450.0, "tpot_ms_p99": 40.0},
}

_OFF_WORDS = frozenset({"off", "none"})
DEFAULT_SOURCE = "the default: errors fail a test unless a budget allows them"


@dataclass(frozen=True)
class Budget:
    """One limit on one statistic, and where it came from (for the reason line)."""

    key: str
    limit: float
    source: str

    @property
    def metric(self) -> str:
        return KEYS[self.key][0]

    @property
    def stat(self) -> str | None:
        return KEYS[self.key][1]

    @property
    def direction(self) -> Direction:
        return KEYS[self.key][2]

    @property
    def label(self) -> str:
        """How reason lines name the figure: ``ttft_ms p95``, ``output_tok_per_s``."""
        return self.metric if self.stat is None else f"{self.metric} {self.stat}"

    def observed(
        self, summary: Summary, run_figures: Mapping[str, float | None] | None = None
    ) -> float | None:
        """The figure this budget limits, or ``None`` when the run did not define it."""
        if self.metric in RUN_FIGURES:
            return (run_figures or {}).get(self.metric)
        if self.stat is None:
            value: float | None = getattr(summary, self.metric)
            return value
        dist = getattr(summary, self.metric)
        if dist is None:
            return None
        stat_value: float = getattr(dist, self.stat)
        return stat_value

    def violation(
        self, summary: Summary, run_figures: Mapping[str, float | None] | None = None
    ) -> str | None:
        """A one-line reason when the budget is missed, else ``None``.

        A figure the run could not measure (every request failed, one-token
        answers have no TPOT) misses its budget: passing it would hide the fault.
        A per-request limit misses nothing itself (it defines good requests),
        and a capacity floor applies only where ``run_figures`` is given.
        """
        if self.direction == "per_request" or (self.metric in RUN_FIGURES and run_figures is None):
            return None
        unit = UNITS[self.metric]
        limit = f"{_fmt(self.limit)} {unit}".rstrip()
        value = self.observed(summary, run_figures)
        if self.key == "error_rate_max":
            if value is None or value <= self.limit:
                return None
            # The count and the server's own words say more than a fraction does.
            first = f"; first: {summary.first_error}" if summary.first_error else ""
            return (
                f"{summary.errors} of {summary.requests} requests failed (error_rate {_fmt(value)} > "
                f"error_rate_max {limit}, {self.source}){first}"
            )
        if self.key == "slo_attainment_min" and value is not None and value < self.limit:
            limits = ", ".join(f"{k} <= {_fmt(v)}" for k, v in summary.slo.as_dict().items()) or "none given"
            return (
                f"{summary.good_requests} of {summary.requests} requests met the per-request limits "
                f"({limits}): slo_attainment {_fmt(value)} below budget {limit} ({self.source})"
            )
        if value is None:
            what = "the search found no load that meets the budget" if self.metric in RUN_FIGURES else (
                "no request defined it"
            )  # fmt: skip
            return f"{self.label} not measured ({what}); budget {limit} ({self.source})"
        if self.direction == "max" and value > self.limit:
            return (
                f"{self.label} = {_fmt(value)} {unit}".rstrip() + f" exceeds budget {limit} ({self.source})"
            )
        if self.direction == "min" and value < self.limit:
            return f"{self.label} = {_fmt(value)} {unit}".rstrip() + f" below budget {limit} ({self.source})"
        return None


@dataclass(frozen=True)
class Budgets:
    """One layer of budgets (or the merged result): keyed limits plus cleared keys.

    ``cleared`` names keys this layer switches off in the layers below it; it
    is empty in a merged result.
    """

    items: tuple[Budget, ...] = ()
    cleared: frozenset[str] = frozenset()

    def __iter__(self) -> Iterator[Budget]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def get(self, key: str) -> Budget | None:
        for budget in self.items:
            if budget.key == key:
                return budget
        return None

    def as_dict(self) -> dict[str, float]:
        return {b.key: b.limit for b in self.items}

    def violations(
        self, summary: Summary, run_figures: Mapping[str, float | None] | None = None
    ) -> tuple[str, ...]:
        """Reason lines of every missed budget, in key order.

        ``run_figures`` holds what a capacity search found (``capacity_concurrency``,
        ``capacity_rate``); without it the capacity floors are not this test's business.
        """
        found = (b.violation(summary, run_figures) for b in self.items)
        return tuple(reason for reason in found if reason is not None)

    def slo(self) -> Slo:
        """The per-request limits (``slo_*_ms``) that decide which requests are good."""
        limits = {SLO_KEYS[b.key]: b.limit for b in self.items if b.key in SLO_KEYS}
        return Slo(**limits)

    def without(self, *keys: str) -> Budgets:
        """These budgets less ``keys`` (a capacity probe is not judged on the capacity floors)."""
        return Budgets(tuple(b for b in self.items if b.key not in keys), self.cleared)


def _fmt(value: float) -> str:
    if value == 0 or abs(value) >= 100:
        return f"{value:.0f}" if value == int(value) else f"{value:.1f}"
    return f"{value:.3g}"


def _unknown_key(key: str, source: str) -> ConfigError:
    close = difflib.get_close_matches(key, [*KEYS, "preset"], n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    latency = "{" + ",".join(LATENCY_METRICS) + "}_{" + ",".join(LATENCY_STATS) + "}"
    rates = "{" + ",".join((*RATE_METRICS, *GOODPUT_METRICS, *RUN_FIGURES)) + "}_min"
    slo = "{" + ",".join(SLO_KEYS) + "}"
    return ConfigError(
        f"unknown budget key {key!r} in {source}: {hint}valid keys are {latency}, {rates}, "
        f"error_rate_max, {slo}, or preset=<name> with one of {', '.join(PRESETS)}"
    )


def _limit(key: str, value: object, source: str) -> float:
    example = f"{key}=0.01" if key == "error_rate_max" else f"{key}=500"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"budget {key} in {source} must be a number, got {value!r}; type e.g. {example}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(
            f"budget {key} in {source} must be a number, got {value!r}; type e.g. {example}"
        ) from None
    if not math.isfinite(number) or number < 0:
        raise ConfigError(f"budget {key} in {source} must be a finite number >= 0, got {value!r}")
    if key in ("error_rate_max", "slo_attainment_min") and number > 1:
        example = (
            "error_rate_max=0.01 for 1%" if key == "error_rate_max" else "slo_attainment_min=0.99 for 99%"
        )
        raise ConfigError(f"{key} in {source} is a fraction between 0 and 1, got {value!r}; type {example}")
    return number


def _preset(name: object, source: str) -> dict[str, float]:
    if isinstance(name, str) and name in PRESETS:
        return PRESETS[name]
    close = difflib.get_close_matches(str(name), list(PRESETS), n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ConfigError(
        f"unknown budget preset {name!r} in {source}: {hint}known presets are {', '.join(PRESETS)}"
    )


def _layer(presets: Sequence[object], pairs: Sequence[tuple[str, object]], source: str) -> Budgets:
    """Presets first (later presets override earlier), then explicit keys over them."""
    limits: dict[str, tuple[float, str]] = {}
    for name in presets:
        for key, limit in _preset(name, source).items():
            limits[key] = (limit, f"{source}, preset {name}")
    cleared: set[str] = set()
    for key, value in pairs:
        if key not in KEYS:
            raise _unknown_key(key, source)
        if value is None or (isinstance(value, str) and value.strip().lower() in _OFF_WORDS):
            limits.pop(key, None)
            cleared.add(key)
            continue
        limits[key] = (_limit(key, value, source), source)
        cleared.discard(key)
    items = tuple(Budget(key, limit, src) for key, (limit, src) in sorted(limits.items()))
    return Budgets(items, frozenset(cleared))


def _split_presets(args: Sequence[object], kwargs: Mapping[str, object], source: str) -> list[object]:
    presets: list[object] = list(args)
    preset = kwargs.get("preset")
    if preset is None:
        return presets
    if isinstance(preset, str):
        presets.append(preset)
    elif isinstance(preset, (list, tuple)):
        presets.extend(preset)
    else:
        raise ConfigError(f"preset in {source} must be a name or a list of names, got {preset!r}")
    return presets


def parse_marker(args: Sequence[object], kwargs: Mapping[str, object], source: str = "marker") -> Budgets:
    """Budgets from ``@pytest.mark.llm_budget(*presets, preset=..., KEY=VALUE...)``."""
    for arg in args:
        if not isinstance(arg, str):
            raise ConfigError(
                f"positional arguments of llm_budget in {source} are preset names, got {arg!r}; "
                "give limits as keywords, e.g. llm_budget(ttft_ms_p95=500)"
            )
    presets = _split_presets(args, kwargs, source)
    return _layer(presets, [(k, v) for k, v in kwargs.items() if k != "preset"], source)


def parse_table(table: Mapping[str, object], source: str) -> Budgets:
    """Budgets from one pyproject table, e.g. ``[tool.llmperf.budgets."gemma3-270m"]``."""
    presets = _split_presets((), table, source)
    return _layer(presets, [(k, v) for k, v in table.items() if k != "preset"], source)


def parse_tables(tables: Mapping[str, object]) -> dict[str, Budgets]:
    """Every model's table of ``[tool.llmperf.budgets]``, checked at configure time."""
    parsed: dict[str, Budgets] = {}
    for model, table in tables.items():
        source = f'[tool.llmperf.budgets."{model}"]'
        if not isinstance(table, Mapping):
            raise ConfigError(
                f"{source} must be a table of KEY = VALUE lines, got {table!r}; "
                f'write e.g. [tool.llmperf.budgets."{model}"] then ttft_ms_p95 = 500'
            )
        parsed[str(model)] = parse_table(table, source)
    return parsed


def parse_cli(values: Sequence[str] | Mapping[str, str], source: str = "--llm-budget") -> Budgets:
    """Budgets from repeated ``--llm-budget`` values (or those values already split at ``=``).

    Each value is ``KEY=VALUE``, ``preset=NAME`` or a bare preset name, and may
    hold several comma-separated items: ``ttft_ms_p95=500,tpot_ms_p50=40``.
    """
    if isinstance(values, Mapping):
        return parse_table(values, source)
    presets: list[object] = []
    pairs: list[tuple[str, object]] = []
    for value in values:
        for item in (part.strip() for part in value.split(",")):
            if not item:
                continue
            if "=" not in item:
                if item in PRESETS:
                    presets.append(item)
                    continue
                if item in KEYS:
                    raise ConfigError(f"{source} {item!r} has no value; type e.g. {source} {item}=500")
                close = difflib.get_close_matches(item, [*PRESETS, *KEYS], n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(
                    f"{source} {item!r} is neither KEY=VALUE nor a preset name{hint}; "
                    f"type e.g. {source} ttft_ms_p95=500 or {source} mlperf-llama3.1-8b"
                )
            key, _, raw = item.partition("=")
            key, raw = key.strip(), raw.strip()
            if key == "preset":
                presets.append(raw)
            else:
                pairs.append((key, raw))
    return _layer(presets, pairs, source)


DEFAULTS = Budgets((Budget("error_rate_max", 0.0, DEFAULT_SOURCE),))
"""The layer under every other: failed requests fail a test unless a budget says otherwise."""


def merge_budgets(*layers: Budgets | None) -> Budgets:
    """Resolve layers per key, lowest first: ``merge_budgets(DEFAULTS, config, marker, cli)``.

    A higher layer replaces a lower layer's limit for the same key and leaves
    the others alone; a key it clears (``off``) is removed from the lower ones.
    """
    limits: dict[str, Budget] = {}
    for layer in layers:
        if layer is None:
            continue
        for key in layer.cleared:
            limits.pop(key, None)
        for budget in layer.items:
            limits[budget.key] = budget
    return Budgets(tuple(limits[key] for key in sorted(limits)))

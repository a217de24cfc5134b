"""Typed values that flow one way through a measurement.

``Scenario`` (what to run) -> ``RequestRecord`` (raw ``perf_counter_ns``
stamps of one request) -> ``Summary`` (derived figures) -> ``RunResult``.

Raw timestamps are the source of truth: every latency is a property derived
from them and is ``None`` when it is undefined (a failed request has no TTFT,
a one-token answer has no TPOT). This module does no I/O and imports nothing
from the rest of the package.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

Api = Literal["completions", "chat", "ollama-generate", "ollama-chat"]
Arrival = Literal["constant", "poisson"]
ChunkTokensSource = Literal["usage", "one_per_chunk", "estimated"]
OutcomeKind = Literal["pass", "fail-budget", "fail-regression", "invalid", "fail", "error", "skip"]
"""The first four are measured verdicts; ``fail``, ``error`` and ``skip`` are what pytest
saw when that differs (the test's own assert, an exception from the run, a setup error)."""
PYTEST_WORDS: dict[OutcomeKind, str] = {
    "pass": "passed",
    "fail-budget": "failed",
    "fail-regression": "failed",
    "invalid": "invalid",  # pytest's summary line counts it apart (the plugin's own test status)
    "fail": "failed",
    "error": "error",
    "skip": "skipped",
}
"""The word pytest's summary line counts each final outcome under (``invalid`` is a failure)."""
HardwareMode = Literal["warn", "fail", "ignore"]
"""What a baseline from other hardware, engine or model does: a note, an invalid run, or nothing."""

Progress = Callable[[str], None]
"""Receives lines worth showing while something slow runs (a build, a server start, a model pull)."""

HIGHER_IS_BETTER = frozenset(
    {"output_tok_per_s", "capacity_concurrency", "capacity_rate", "peak_output_tok_per_s"}
)
"""Metrics where a lower figure is the regression."""


@dataclass(frozen=True)
class Capabilities:
    """What the engine honours, so the client can ask for exact lengths.

    ``extra_body`` is merged into every generation request (for example
    ``{"ignore_eos": True}``); ``tokenize`` names the dialect of the server's
    tokenizer endpoint, or is ``None`` when prompts must be calibrated from
    ``usage``.
    """

    api: Api
    exact_output: bool
    usage_in_stream: bool
    usage_per_chunk: bool = False
    tokenize: str | None = None
    metrics_path: str | None = None
    extra_body: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    """One measured case: the load shape and the exact token lengths."""

    input_tokens: int
    output_tokens: int
    concurrency: int = 1
    requests: int = 8
    warmup: int = 1
    rate: float | None = None
    arrival: Arrival = "poisson"
    seed: int = 0
    timeout_s: float = 300.0
    adaptive: bool = False
    target_rel_ci: float = 0.05
    min_requests: int = 8
    duration_s: float | None = None
    """Stop starting requests this long after the measured phase began (``requests`` is then a cap)."""
    turns: int = 1
    """Requests per conversation: each worker sends a conversation's turns one after another."""

    @property
    def name(self) -> str:
        load = f"c{self.concurrency}" if self.rate is None else f"r{self.rate:g}c{self.concurrency}"
        return f"in{self.input_tokens}-out{self.output_tokens}-{load}"


@dataclass(frozen=True)
class Slo:
    """Per-request limits that make a completed request *good* (vLLM's ``--goodput``), in ms.

    ``None`` is no limit on that figure. Latencies count from when the request
    was due (``scheduled_ns``), so an open-loop request that waited for a free
    slot carries that wait, as the user who sent it would.
    """

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    def as_dict(self) -> dict[str, float]:
        """The limits given, by figure: ``{"ttft_ms": 500.0}`` (the JSON's ``slo``)."""
        limits = {"ttft_ms": self.ttft_ms, "tpot_ms": self.tpot_ms, "e2e_ms": self.e2e_ms}
        return {name: value for name, value in limits.items() if value is not None}


@dataclass(frozen=True)
class RequestRecord:
    """One request as the client saw it, stamped with ``time.perf_counter_ns``.

    ``chunk_ns[i]`` is when the i-th content-carrying event arrived and
    ``chunk_tokens[i]`` how many output tokens it carried (``chunk_tokens_source``
    says how that count is known). ``scheduled_ns`` is when the load generator
    wanted the request sent; ``sent_ns - scheduled_ns`` is client queue delay,
    never counted in TTFT.
    """

    request_id: str
    scenario: str
    input_tokens_requested: int
    output_tokens_requested: int
    scheduled_ns: int
    sent_ns: int
    end_ns: int
    chunk_ns: tuple[int, ...] = ()
    chunk_tokens: tuple[int, ...] = ()
    chunk_tokens_source: ChunkTokensSource = "one_per_chunk"
    input_tokens: int | None = None
    output_tokens: int | None = None
    status: int | None = None
    error: str | None = None
    warmup: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.chunk_ns)

    @property
    def queue_ns(self) -> int:
        return self.sent_ns - self.scheduled_ns

    @property
    def ttft_ns(self) -> int | None:
        return self.chunk_ns[0] - self.sent_ns if self.ok else None

    @property
    def e2e_ns(self) -> int | None:
        return self.end_ns - self.sent_ns if self.ok else None

    @property
    def tpot_ns(self) -> float | None:
        """(E2E - TTFT) / (output tokens - 1), as vLLM's ``bench serve`` defines it."""
        if not self.ok or self.output_tokens is None or self.output_tokens < 2:
            return None
        return (self.end_ns - self.chunk_ns[0]) / (self.output_tokens - 1)

    @property
    def itl_ns(self) -> tuple[float, ...]:
        """Inter-token gaps; a chunk of k tokens after a gap g gives k gaps of g/k.

        The tokens of the first chunk beyond its first arrive together with it,
        so they add gaps of zero: every token after the first has one gap, and
        ``len(itl_ns) == sum(chunk_tokens) - 1``. A chunk that carried no token
        passes its time on to the next chunk that did. Without a token count for
        every chunk the per-token gaps are unknown, so this is empty.
        """
        if not self.ok or len(self.chunk_tokens) != len(self.chunk_ns):
            return ()
        gaps: list[float] = []
        previous: int | None = None
        for at, k in zip(self.chunk_ns, self.chunk_tokens, strict=True):
            if k <= 0:
                continue
            if previous is None:
                gaps.extend([0.0] * (k - 1))
            else:
                gaps.extend([(at - previous) / k] * k)
            previous = at
        return tuple(gaps)


@dataclass(frozen=True)
class Distribution:
    """Order statistics of one metric, in the unit its name carries."""

    count: int
    mean: float
    stddev: float
    min: float
    max: float
    p50: float
    p90: float
    p95: float
    p99: float

    def as_dict(self) -> dict[str, float]:
        return {
            "p50": self.p50,
            "p90": self.p90,
            "p95": self.p95,
            "p99": self.p99,
            "mean": self.mean,
            "min": self.min,
            "max": self.max,
            "stddev": self.stddev,
        }


@dataclass(frozen=True)
class Summary:
    """Figures derived from the measured (non-warm-up) records of one run."""

    requests: int
    completed: int
    errors: int
    duration_s: float
    ttft_ms: Distribution | None
    itl_ms: Distribution | None
    tpot_ms: Distribution | None
    e2e_ms: Distribution | None
    queue_ms: Distribution | None
    request_per_s: float | None
    output_tok_per_s: float | None
    total_tok_per_s: float | None
    error_rate: float
    input_tokens_mean: float | None
    output_tokens_mean: float | None
    output_length_misses: int
    first_error: str | None = None
    """The error text of the first measured request that failed (in completion order)."""
    slo: Slo = field(default_factory=Slo)
    """The per-request limits ``good_requests`` were counted against."""
    good_requests: int | None = None
    slo_attainment: float | None = None
    """Good requests / measured requests (failed ones are never good)."""
    goodput_rps: float | None = None
    """Good requests per second of the measured window."""
    goodput_tok_per_s: float | None = None
    """Output tokens of good requests per second of the measured window."""


@dataclass(frozen=True)
class RunResult:
    """Everything one ``llm_perf.run`` produced, before any verdict.

    ``invalid`` holds the reasons this measurement cannot be trusted (client
    saturation, output lengths not honoured); an empty tuple means valid.
    ``extra`` carries optional sections (telemetry, server metrics) as JSON.
    """

    model: str
    backend: str
    scenario: Scenario
    records: tuple[RequestRecord, ...]
    summary: Summary
    invalid: tuple[str, ...] = ()
    loop_lag_ms: Distribution | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def measured(self) -> tuple[RequestRecord, ...]:
        return tuple(r for r in self.records if not r.warmup)


ComparisonMethod = Literal["samples", "repeats", "history", "absolute", "figure"]
"""How a metric was compared: per-request samples or repeats of one baseline run, the
run figures of several (``history``), an absolute difference (error rate), or one
number per run (``figure``: capacity, peak throughput)."""


@dataclass(frozen=True)
class Comparison:
    """One metric against its baseline; ``change`` is relative (absolute for error_rate).

    ``baseline`` is the baseline's figure (the median of its runs' figures for
    ``history``), ``low..high`` the interval around ``change``, ``bar`` the
    change that fails (the tolerance, or more where noise demands it),
    ``spread`` the relative sd between runs (``history``) or repeats, ``runs``
    the baseline runs compared with and ``waves`` the independent samples of
    each side (requests in flight together count once).
    """

    metric: str
    baseline: float
    current: float
    change: float
    low: float
    high: float
    tolerance: float
    n_baseline: int
    n_current: int
    regressed: bool
    method: ComparisonMethod = "samples"
    bar: float | None = None
    spread: float | None = None
    runs: int = 1
    waves: tuple[int, int] | None = None

    @property
    def higher_is_better(self) -> bool:
        return self.metric in HIGHER_IS_BETTER

    def reason(self, confidence: float = 0.95) -> str:
        if self.metric == "error_rate":
            return (
                f"error_rate {self.current:.3g} vs baseline {self.baseline:.3g} "
                f"(+{self.change:.3g}; tolerance +{self.tolerance:.3g})"
            )
        unit = {"output_tok_per_s": "tok/s", "peak_output_tok_per_s": "tok/s", "capacity_rate": "req/s"}.get(
            self.metric, "" if self.metric == "capacity_concurrency" else "ms"
        )
        name = "output_tok_per_s (per request)" if self.metric == "output_tok_per_s" else self.metric
        sign = "-" if self.higher_is_better else "+"
        tolerance = f"tolerance {sign}{self.tolerance:.0%}"
        bar = f"{self.bar:+.1%}" if self.bar is not None else ""
        if self.method == "figure":
            runs = f"{self.runs} baseline run" + ("" if self.runs == 1 else "s")
            spread = f", unchanged runs here vary +-{self.spread:.1%}" if self.spread is not None else ""
            return (
                f"{name} {self.baseline:.4g} -> {self.current:.4g} {unit}".rstrip()
                + f" ({self.change:+.1%} vs {runs}{spread}; the bar is {bar}, {tolerance}, "
                "and more than one search step)"
            )
        figures = f"median {self.baseline:.4g} -> {self.current:.4g} {unit}"
        if self.method == "history":
            spread = f"+-{self.spread:.1%}" if self.spread is not None else "an unknown amount"
            return (
                f"{name} {self.change:+.1%} vs {self.runs} baseline runs (unchanged runs here vary {spread}, "
                f"so the bar is {bar}; {tolerance}; {figures})"
            )
        high = "inf" if math.isinf(self.high) else f"{self.high:+.1%}"
        ci = f"{confidence:.0%} CI {self.low:+.1%}..{high}"
        if self.method == "repeats":
            size = f"{self.n_baseline}/{self.n_current} repeats vary +-{self.spread or 0:.1%}"
        elif self.waves is not None and self.waves != (self.n_baseline, self.n_current):
            size = f"n={self.n_baseline}/{self.n_current} in {self.waves[0]}/{self.waves[1]} waves"
        else:
            size = f"n={self.n_baseline}/{self.n_current}"
        if self.bar is None:
            return f"{name} {self.change:+.1%} vs baseline ({ci}, {tolerance}; {figures}, {size})"
        return (
            f"{name} {self.change:+.1%} vs one baseline run ({ci}, {size}; the spread between runs is "
            f"unknown, so the bar is {bar}, not the {tolerance}; {figures})"
        )


@dataclass(frozen=True)
class Outcome:
    """The verdict of one test: its kind, the reasons of that kind, and what else was seen.

    ``notes`` are lines worth showing that do not decide the kind (a hardware
    warning, a baseline of another case); ``comparisons`` are every metric
    compared with the baseline, regressed or not, for reports.
    """

    kind: OutcomeKind
    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    comparisons: tuple[Comparison, ...] = ()

    @property
    def passed(self) -> bool:
        return self.kind == "pass"

    @property
    def reason(self) -> str:
        """The first reason, for one-line reports; empty on a pass."""
        return self.reasons[0] if self.reasons else ""


@dataclass(frozen=True)
class CaseResult:
    """One test's measured run with its verdict: what the session keeps and the writers get.

    ``engine`` is the serving engine's label (``llama.cpp``, ``vllm``) and
    ``engine_version`` its version where the server reports one.
    """

    nodeid: str
    run: RunResult
    outcome: Outcome
    engine: str
    engine_version: str | None

"""pytest-benchmark integration: one benchmark entry per ``llm_perf`` test.

The entry's ``stats`` come from the per-request end-to-end latencies (in
seconds, pytest-benchmark's unit), so ``--benchmark-json``, ``--benchmark-autosave``,
``--benchmark-compare`` and ``pytest-benchmark compare`` all work on it. The
LLM figures go into ``extra_info["llm"]``, a public contract documented in the
README: keys are added, never renamed (``schema`` says which layout).

This module relies on ``BenchmarkFixture._make_stats``, pytest-benchmark's
own way to start a stats series (pinned to pytest-benchmark 5.x).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypedDict

from pytest_llmperf.judge.baseline import LlmSamples, request_samples
from pytest_llmperf.records import Distribution, RunResult

if TYPE_CHECKING:
    from pytest_llmperf.judge.verdict import Outcome

SCHEMA = 1
DistJson = dict[str, float]


class LlmInfo(TypedDict, total=False):
    schema: int
    model: str
    backend: str
    engine: str
    input_tokens: int
    output_tokens: int
    concurrency: int
    requests: int
    rate: float | None
    ttft_ms: DistJson | None
    itl_ms: DistJson | None
    tpot_ms: DistJson | None
    e2e_ms: DistJson | None
    queue_ms: DistJson | None
    output_tok_per_s: float | None
    total_tok_per_s: float | None
    request_per_s: float | None
    error_rate: float
    errors: int
    completed: int
    output_length_misses: int
    input_tokens_mean: float | None
    output_tokens_mean: float | None
    duration_s: float
    outcome: str
    reasons: list[str]
    invalid: list[str]
    loop_lag_ms: DistJson | None
    samples: LlmSamples
    telemetry: object


def _dist(d: Distribution | None) -> DistJson | None:
    return d.as_dict() if d is not None else None


def llm_info(result: RunResult, outcome: Outcome | None, engine: str = "") -> LlmInfo:
    s, sc = result.summary, result.scenario
    return LlmInfo(
        schema=SCHEMA,
        model=result.model,
        backend=result.backend,
        engine=engine,
        input_tokens=sc.input_tokens,
        output_tokens=sc.output_tokens,
        concurrency=sc.concurrency,
        requests=s.requests,
        rate=sc.rate,
        ttft_ms=_dist(s.ttft_ms),
        itl_ms=_dist(s.itl_ms),
        tpot_ms=_dist(s.tpot_ms),
        e2e_ms=_dist(s.e2e_ms),
        queue_ms=_dist(s.queue_ms),
        output_tok_per_s=s.output_tok_per_s,
        total_tok_per_s=s.total_tok_per_s,
        request_per_s=s.request_per_s,
        error_rate=s.error_rate,
        errors=s.errors,
        completed=s.completed,
        output_length_misses=s.output_length_misses,
        input_tokens_mean=s.input_tokens_mean,
        output_tokens_mean=s.output_tokens_mean,
        duration_s=s.duration_s,
        outcome=outcome.kind if outcome is not None else "pass",
        reasons=list(outcome.reasons) if outcome is not None else [],
        invalid=list(result.invalid),
        loop_lag_ms=_dist(result.loop_lag_ms),
        samples=request_samples(result),
        telemetry=result.extra.get("telemetry", {}),
    )


def record(benchmark: Any, result: RunResult, outcome: Outcome | None, engine: str = "") -> bool:
    """Fill the test's benchmark fixture; False when no request succeeded (no E2E to time)."""
    benchmark.extra_info["llm"] = llm_info(result, outcome, engine)
    # Marks the fixture used, as benchmark(...) would: no "fixture was not used" warning.
    benchmark._mode = "llm_perf.run(...)"
    e2e_s = [r.e2e_ns / 1e9 for r in result.measured if r.e2e_ns is not None]
    if not e2e_s:
        return False
    stats = benchmark._make_stats(1)
    for value in e2e_s:
        stats.update(value)
    return True

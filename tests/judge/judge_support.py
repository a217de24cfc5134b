"""Runs with known figures for the verdict tests: requests one after the other, TTFT 50..65 ms."""

from __future__ import annotations

from typing import Any

from pytest_llmperf.records import Distribution, RequestRecord, RunResult, Scenario, Summary
from pytest_llmperf.schema import request_samples

MS = 1_000_000


def record(i: int, ttft_ms: float, itl_ms: float, tokens: int = 5, error: str | None = None) -> RequestRecord:
    chunks = tuple(round((ttft_ms + k * itl_ms) * MS) for k in range(tokens)) if error is None else ()
    return RequestRecord(
        request_id=f"r{i}",
        scenario="in8-out5-c1",
        input_tokens_requested=8,
        output_tokens_requested=tokens,
        scheduled_ns=0,
        sent_ns=0,
        end_ns=chunks[-1] if chunks else round(ttft_ms * MS),
        chunk_ns=chunks,
        chunk_tokens=(1,) * len(chunks),
        input_tokens=8,
        output_tokens=tokens if error is None else None,
        error=error,
    )


def dist(value: float) -> Distribution:
    return Distribution(1, value, 0.0, value, value, value, value, value, value)


def run(
    ttfts: list[float],
    itl_ms: float,
    *,
    invalid: tuple[str, ...] = (),
    errors: int = 0,
    concurrency: int = 1,
    telemetry: dict[str, Any] | None = None,
) -> RunResult:
    records = [record(i, t, itl_ms) for i, t in enumerate(ttfts)]
    records += [record(len(ttfts) + i, 1.0, 0.0, error="HTTP 500") for i in range(errors)]
    n = len(records)
    summary = Summary(
        requests=n,
        completed=len(ttfts),
        errors=errors,
        # One request after the other, as at concurrency 1: every request is its own wave.
        duration_s=sum(t + 4 * itl_ms for t in ttfts) / 1000,
        ttft_ms=dist(sorted(ttfts)[len(ttfts) // 2]),
        itl_ms=dist(itl_ms),
        tpot_ms=dist(itl_ms),
        e2e_ms=None,
        queue_ms=None,
        request_per_s=float(n),
        output_tok_per_s=100.0,
        total_tok_per_s=200.0,
        error_rate=errors / n,
        input_tokens_mean=8.0,
        output_tokens_mean=5.0,
        output_length_misses=0,
    )
    scenario = Scenario(input_tokens=8, output_tokens=5, concurrency=concurrency, requests=n)
    extra: dict[str, object] = {"telemetry": telemetry} if telemetry is not None else {}
    return RunResult("m", "llamacpp", scenario, tuple(records), summary, invalid, extra=extra)


def baseline_of(result: RunResult) -> dict[str, Any]:
    """The ``extra_info["llm"]`` fields a comparison reads, as the plugin saves them."""
    sc = result.scenario
    return {
        "model": result.model,
        "backend": result.backend,
        "input_tokens": sc.input_tokens,
        "output_tokens": sc.output_tokens,
        "concurrency": sc.concurrency,
        "error_rate": result.summary.error_rate,
        "samples": dict(request_samples(result)),
        "duration_s": result.summary.duration_s,
        "outcome": "pass",
        "schema": 1,
    }


TTFTS = [50.0 + i for i in range(16)]  # 50..65 ms, so TTFT has a spread like a real run

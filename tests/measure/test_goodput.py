"""Goodput and SLO attainment (vLLM's ``--goodput``), the knee of a sweep, and when a sweep stops.

The records are crafted with known stamps, so every expected figure is a
hand computation written next to it.
"""

from __future__ import annotations

import pytest

from pytest_llmperf.measure.stats import CurvePoint, is_good, knee, saturation, summarize, with_goodput
from pytest_llmperf.records import RequestRecord, Scenario, Slo

MS = 1_000_000


def record(
    i: int, *, due: float, sent: float, first: float, end: float, tokens: int = 5, error: str | None = None
) -> RequestRecord:
    """Stamps in ms: ``due`` (scheduled), ``sent``, ``first`` token, ``end``; tokens evenly spaced."""
    step = (end - first) / (tokens - 1) if tokens > 1 else 0.0
    chunks = tuple(round((first + k * step) * MS) for k in range(tokens)) if error is None else ()
    return RequestRecord(
        request_id=f"r{i}", scenario="s", input_tokens_requested=8, output_tokens_requested=tokens,
        scheduled_ns=round(due * MS), sent_ns=round(sent * MS), end_ns=round(end * MS), chunk_ns=chunks,
        chunk_tokens=(1,) * len(chunks), input_tokens=8, output_tokens=tokens if error is None else None,
        error=error,
    )  # fmt: skip


# TTFT from due / TPOT / E2E from due, in ms:
RECORDS = (
    record(0, due=0, sent=0, first=100, end=500),  # 100 / 100 / 500: good
    record(1, due=0, sent=50, first=150, end=550),  # 150 (waited 50) / 100 / 550: TTFT over 120
    record(2, due=100, sent=100, first=200, end=1000),  # 100 / 200 / 900: TPOT over 150
    record(3, due=200, sent=200, first=300, end=700, tokens=9),  # 100 / 50 / 500: good, 9 tokens
    record(4, due=300, sent=300, first=0, end=400, error="HTTP 500: boom"),  # failed: never good
)
SLO = Slo(ttft_ms=120, tpot_ms=150, e2e_ms=1000)


def test_a_request_is_good_when_it_completed_and_met_every_limit_counted_from_when_it_was_due() -> None:
    assert [is_good(r, SLO) for r in RECORDS] == [True, False, False, True, False]
    # Without the wait for a slot, request 1's TTFT (100 ms from sending) would have met it.
    assert is_good(RECORDS[1], Slo(ttft_ms=150))
    assert not is_good(RECORDS[1], Slo(ttft_ms=149.9))
    assert is_good(RECORDS[2], Slo(e2e_ms=900))
    assert not is_good(RECORDS[2], Slo(e2e_ms=899.9))
    # No limit: every completed request is good; a failed one never is.
    assert [is_good(r, Slo()) for r in RECORDS] == [True, True, True, True, False]


def test_a_limit_on_a_figure_the_request_lacks_holds_as_vllm_counts_it() -> None:
    one_token = record(9, due=0, sent=0, first=100, end=100, tokens=1)
    assert one_token.tpot_ns is None
    assert is_good(one_token, Slo(tpot_ms=0.001))


def test_goodput_and_attainment_are_exact() -> None:
    summary = with_goodput(summarize(RECORDS, Scenario(8, 5)), RECORDS, SLO)
    # The window runs from the first send (0 ms) to the last end (1000 ms): 1 s.
    assert summary.duration_s == 1.0
    assert summary.good_requests == 2
    assert summary.slo_attainment == 2 / 5
    assert summary.goodput_rps == 2.0
    assert summary.goodput_tok_per_s == 5 + 9  # the good requests' output tokens over 1 s
    assert summary.slo == SLO
    assert summary.request_per_s == 4.0  # all completed requests, for comparison


def test_warm_up_requests_are_left_out_and_no_window_means_no_rate() -> None:
    import dataclasses

    warm = dataclasses.replace(RECORDS[0], request_id="w", warmup=True, end_ns=5000 * MS)
    summary = with_goodput(summarize((warm, *RECORDS), Scenario(8, 5)), (warm, *RECORDS), SLO)
    assert (summary.good_requests, summary.slo_attainment, summary.goodput_rps) == (2, 0.4, 2.0)
    empty = with_goodput(summarize((), Scenario(8, 5)), (), SLO)
    assert (empty.good_requests, empty.slo_attainment, empty.goodput_rps, empty.goodput_tok_per_s) == (
        0, None, None, None,
    )  # fmt: skip


def test_output_lengths_are_checked_against_each_requests_own_ask() -> None:
    # Request 3 asked for 9 tokens and got 9: with per-request asks it is not a miss.
    assert summarize(RECORDS, Scenario(8, 5)).output_length_misses == 0


def points(
    *rates: float | None, e2e: tuple[float, ...] = (), errors: tuple[float, ...] = ()
) -> list[CurvePoint]:
    return [
        CurvePoint(2.0**i, rate, e2e[i] if i < len(e2e) else 100.0, errors[i] if i < len(errors) else 0.0)
        for i, rate in enumerate(rates)
    ]


@pytest.mark.parametrize(
    ("rates", "expected"),
    [
        ((100, 180, 260, 340, 345, 350), 3),  # 8 is the lightest load nothing later beats by 10%
        ((100, 180, 260, 280), 2),  # 8 adds under 10% over 4: the knee is 4
        ((100, 105, 108), 0),  # flat from the start
        ((100, 180, 400), 2),  # still rising: the last point (the caller says it is beyond)
        ((None, 100, 150), 2),
        ((None, None), None),
    ],
)
def test_the_knee_is_the_lightest_load_no_heavier_one_beats_by_more_than_the_gain(
    rates: tuple[float | None, ...], expected: int | None
) -> None:
    assert knee(points(*rates)) == expected


def test_a_sweep_stops_after_two_points_without_a_real_gain() -> None:
    assert saturation(points(100, 180, 260, 340)) is None
    assert saturation(points(100, 180, 260, 340, 345)) is None  # one flat point is not yet a plateau
    assert saturation(points(100, 180, 260, 340, 345, 350)) == (
        "saturated: throughput at 16, 32 rose less than 10% over the best before"
    )
    # A dip then a recovery above the best resets it.
    assert saturation(points(100, 180, 150, 200)) is None
    assert saturation(points(100, 200, 190), gain=0.10, plateau=1) is not None


def test_a_sweep_stops_when_latency_or_errors_explode() -> None:
    assert saturation(points(100, 200, 300, e2e=(100.0, 500.0, 999.0))) is None
    assert saturation(points(100, 200, 300, e2e=(100.0, 500.0, 1000.0))) == (
        "latency exploded at 4: median E2E 1000 ms is 10x the first point's"
    )
    assert (
        saturation(points(100, 200, errors=(0.0, 0.11))) == "errors exploded at 2: 11% of its requests failed"
    )
    assert saturation(points(100, None)) == "no throughput at 2: no completed request with a token count"

"""The metric math of RequestRecord, with exact values (all stamps in ns)."""

from __future__ import annotations

import pytest

from pytest_llmperf.records import RequestRecord


def rec(**kw: object) -> RequestRecord:
    base: dict[str, object] = {
        "request_id": "r",
        "scenario": "s",
        "input_tokens_requested": 8,
        "output_tokens_requested": 4,
        "scheduled_ns": 900,
        "sent_ns": 1_000,
        "end_ns": 10_000,
    }
    base.update(kw)
    return RequestRecord(**base)  # type: ignore[arg-type]


def test_one_token_per_chunk() -> None:
    r = rec(chunk_ns=(4_000, 6_000, 7_000, 10_000), chunk_tokens=(1, 1, 1, 1), output_tokens=4)
    assert r.ok
    assert r.queue_ns == 100
    assert r.ttft_ns == 3_000
    assert r.e2e_ns == 9_000
    # (E2E - TTFT) / (tokens - 1) = 6000 / 3
    assert r.tpot_ns == 2_000.0
    assert r.itl_ns == (2_000.0, 1_000.0, 3_000.0)


def test_multi_token_chunk_spreads_its_gap() -> None:
    # 6 tokens: chunk of 1 at 4000, then a chunk of 3 at 7000, then 2 at 9000.
    r = rec(chunk_ns=(4_000, 7_000, 9_000), chunk_tokens=(1, 3, 2), output_tokens=6, end_ns=9_000)
    assert r.itl_ns == (1_000.0, 1_000.0, 1_000.0, 1_000.0, 1_000.0)
    assert len(r.itl_ns) == 6 - 1
    assert r.tpot_ns == (8_000 - 3_000) / 5


def test_first_chunk_with_several_tokens_adds_zero_gaps() -> None:
    r = rec(chunk_ns=(4_000, 8_000), chunk_tokens=(3, 2), output_tokens=5)
    assert r.itl_ns == (0.0, 0.0, 2_000.0, 2_000.0)


def test_chunk_without_tokens_hands_its_time_to_the_next() -> None:
    r = rec(chunk_ns=(4_000, 5_000, 8_000), chunk_tokens=(1, 0, 2), output_tokens=3)
    assert r.itl_ns == (2_000.0, 2_000.0)


def test_unknown_token_counts_give_no_itl() -> None:
    r = rec(chunk_ns=(4_000, 5_000), chunk_tokens=(), output_tokens=None)
    assert r.itl_ns == ()
    assert r.tpot_ns is None
    assert r.ttft_ns == 3_000


@pytest.mark.parametrize(
    "kw",
    [
        {"error": "HTTP 500: boom", "chunk_ns": (4_000,), "chunk_tokens": (1,), "output_tokens": 1},
        {"chunk_ns": ()},
    ],
)
def test_failed_request_has_no_latencies(kw: dict[str, object]) -> None:
    r = rec(**kw)
    assert not r.ok
    assert r.ttft_ns is None
    assert r.e2e_ns is None
    assert r.tpot_ns is None
    assert r.itl_ns == ()


def test_single_token_answer_has_no_tpot() -> None:
    r = rec(chunk_ns=(4_000,), chunk_tokens=(1,), output_tokens=1)
    assert r.tpot_ns is None
    assert r.itl_ns == ()

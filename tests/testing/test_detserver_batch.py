"""The deterministic server's batch-limited mode follows its stated latency model.

Model (``--max-batch N --itl-growth-ms G``): at most N requests generate at
once, later ones wait in arrival order; the first token comes ``ttft`` after
a request starts generating and the gap after each token is ``itl + G x
(active - 1)``. In a closed loop at concurrency c <= N every request sees c
active, so TPOT = itl + G (c - 1); at c > N, N generate, TPOT stays at its
value for N, and the others' TTFT carries the wait for a slot.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pytest_llmperf.measure import runner
from pytest_llmperf.records import RunResult, Scenario
from pytest_llmperf.testing.harness import DetServer, running_detserver

TTFT_MS, ITL_MS, GROWTH_MS, BATCH, OUT = 20.0, 10.0, 2.0, 4, 12
SEND_MS = 10.0
"""What a client's TTFT adds to the server's: the send leg, which on 2 busy cores (this
single-process server taking several requests in at once) reached 6 ms. Gaps between tokens
(TPOT) carry no send leg, so they are checked to 0.6 ms."""


@pytest.fixture(scope="module")
def batched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DetServer]:
    args = ("--max-batch", str(BATCH), "--itl-growth-ms", str(GROWTH_MS))
    with running_detserver(
        tmp_path_factory.mktemp("batched"), ttft_ms=TTFT_MS, itl_ms=ITL_MS, args=args
    ) as server:
        yield server


def measure(server: DetServer, concurrency: int, requests: int) -> RunResult:
    scenario = Scenario(8, OUT, concurrency=concurrency, requests=requests, warmup=0)
    return runner.measure(runner.Subject(server.target(), model="m", backend="openai"), scenario)


@pytest.mark.parametrize("concurrency", [1, 2, 4])
def test_tpot_grows_with_the_requests_generating_together(batched: DetServer, concurrency: int) -> None:
    s = measure(batched, concurrency, 2 * concurrency).summary
    assert s.errors == 0
    assert s.tpot_ms is not None
    assert s.ttft_ms is not None
    expected = ITL_MS + GROWTH_MS * (concurrency - 1)
    assert s.tpot_ms.p50 == pytest.approx(expected, abs=0.6)
    assert TTFT_MS <= s.ttft_ms.p50 <= TTFT_MS + SEND_MS


def test_beyond_the_batch_limit_requests_wait_and_tpot_stays(batched: DetServer) -> None:
    s = measure(batched, 2 * BATCH, 2 * BATCH).summary
    assert s.tpot_ms is not None
    assert s.ttft_ms is not None
    assert s.tpot_ms.p50 == pytest.approx(ITL_MS + GROWTH_MS * (BATCH - 1), abs=0.6)
    # Half the requests start at once; the other half wait one whole answer for a slot.
    e2e_at_batch = TTFT_MS + (OUT - 1) * (ITL_MS + GROWTH_MS * (BATCH - 1))
    assert TTFT_MS <= s.ttft_ms.min <= TTFT_MS + SEND_MS
    assert e2e_at_batch + TTFT_MS <= s.ttft_ms.max <= e2e_at_batch + TTFT_MS + 2 * SEND_MS

"""Load shapes, warm-up, adaptive stopping and the saturation guard.

Most tests drive ``run_load`` with a fake request that ends after a seeded
number of event-loop turns: the scheduling is then exact and repeatable, and
nothing depends on how fast this machine is. The end-to-end tests at the
bottom use the deterministic server.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_llmperf.measure import loadgen, runner
from pytest_llmperf.measure.loadgen import Control, LagSampler, LoadResult, arrival_offsets_ns, run_load
from pytest_llmperf.measure.stats import distribution, summarize
from pytest_llmperf.records import RequestRecord, Scenario
from pytest_llmperf.testing.harness import running_detserver


@dataclass(frozen=True)
class Done:
    rec: RequestRecord

    def record(self) -> RequestRecord:
        return self.rec


class FakeServer:
    """Counts requests in flight; each ends after 1-6 loop turns (seeded)."""

    def __init__(
        self, seed: int = 0, gap_ns: Callable[[int], int] = lambda i: 1_000, warmups: int = 0
    ) -> None:
        self.warmups = warmups  # requests 0..warmups-1 are warm-up ones, as the runner prepares them
        self.in_flight = 0
        self.max_in_flight = 0
        self.at_send: list[int] = []  # requests in flight just after each send
        self.rng = random.Random(seed)
        self.gap_ns = gap_ns

    async def send(self, index: int, scheduled_ns: int) -> Done:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.at_send.append(self.in_flight)
        sent = time.perf_counter_ns()
        for _ in range(self.rng.randint(1, 6)):
            await asyncio.sleep(0)
        self.in_flight -= 1
        gap = self.gap_ns(index)
        chunks = (sent + 10_000, sent + 10_000 + gap, sent + 10_000 + 2 * gap)
        rec = RequestRecord(
            request_id=f"r{index}",
            scenario="s",
            input_tokens_requested=8,
            output_tokens_requested=3,
            scheduled_ns=scheduled_ns,
            sent_ns=sent,
            end_ns=chunks[-1],
            chunk_ns=chunks,
            chunk_tokens=(1, 1, 1),
            input_tokens=8,
            output_tokens=3,
            warmup=index < self.warmups,
        )
        return Done(rec)


@pytest.mark.parametrize("concurrency", [1, 3, 8])
def test_closed_loop_keeps_exactly_c_in_flight(concurrency: int) -> None:
    fake = FakeServer(seed=concurrency)
    sc = Scenario(input_tokens=8, output_tokens=3, concurrency=concurrency, requests=40, warmup=0)
    result = asyncio.run(run_load(fake.send, sc))
    assert len(result.records) == 40
    assert fake.max_in_flight == concurrency
    # The first c go out together; every later send replaces one that just ended.
    assert fake.at_send[:concurrency] == list(range(1, concurrency + 1))
    assert fake.at_send[concurrency:] == [concurrency] * (40 - concurrency)
    assert sorted(r.request_id for r in result.records) == sorted(f"r{i}" for i in range(40))


def test_warmup_runs_first_and_is_excluded() -> None:
    fake = FakeServer(warmups=3)
    seen: list[RequestRecord] = []
    sc = Scenario(input_tokens=8, output_tokens=3, concurrency=2, requests=6, warmup=3)
    result = asyncio.run(run_load(fake.send, sc, on_record=seen.append))
    assert [r.request_id for r in seen] == [r.request_id for r in result.records]  # every one, as it ended
    assert [r.warmup for r in result.records[:3]] == [True] * 3
    assert {r.request_id for r in result.records[:3]} == {"r0", "r1", "r2"}
    assert not any(r.warmup for r in result.records[3:])
    assert summarize(result.records, sc).requests == 6


def test_open_loop_reports_queue_delay_separately() -> None:
    fake = FakeServer()
    rate = 1e6  # all due within microseconds; the cap of 2 makes the rest queue
    sc = Scenario(
        input_tokens=8, output_tokens=3, concurrency=2, requests=10, warmup=0, rate=rate, arrival="constant"
    )
    result = asyncio.run(run_load(fake.send, sc))
    assert fake.max_in_flight == 2
    by_id = {r.request_id: r for r in result.records}
    ordered = [by_id[f"r{i}"] for i in range(10)]
    start = ordered[0].scheduled_ns
    assert [r.scheduled_ns - start for r in ordered] == [i * 1_000 for i in range(10)]
    for i in range(2, 10):
        # waited for a slot: sent only after an earlier request had ended
        assert ordered[i].sent_ns >= min(r.end_ns for r in ordered[:i])
        assert ordered[i].queue_ns > 0
    # TTFT runs from sending, never from scheduling
    assert all(r.ttft_ns == 10_000 for r in ordered)


def test_arrival_offsets() -> None:
    constant = Scenario(input_tokens=1, output_tokens=1, requests=4, rate=4.0, arrival="constant")
    assert arrival_offsets_ns(constant) == [0, 250_000_000, 500_000_000, 750_000_000]
    poisson = Scenario(input_tokens=1, output_tokens=1, requests=3, rate=2.0, arrival="poisson", seed=5)
    rng = random.Random(5)
    first = rng.expovariate(2.0)
    second = first + rng.expovariate(2.0)
    assert arrival_offsets_ns(poisson) == [0, round(first * 1e9), round(second * 1e9)]


def test_adaptive_stops_once_precise() -> None:
    fake = FakeServer()  # identical requests: the intervals are zero wide at once
    sc = Scenario(
        input_tokens=8, output_tokens=3, concurrency=1, requests=100, warmup=0, adaptive=True, min_requests=10
    )
    result = asyncio.run(run_load(fake.send, sc))
    # It stops issuing at the 10th record; the one already in flight still counts.
    assert 10 <= len(result.records) <= 10 + sc.concurrency
    assert result.stopped_early


def test_adaptive_runs_to_the_cap_when_noisy() -> None:
    fake = FakeServer(gap_ns=lambda i: 1_000 + 50_000 * (i % 3))  # TPOT swings 1x..101x
    sc = Scenario(
        input_tokens=8, output_tokens=3, concurrency=2, requests=30, warmup=0, adaptive=True, min_requests=10
    )
    result = asyncio.run(run_load(fake.send, sc))
    assert len(result.records) == 30
    assert not result.stopped_early


def test_lag_sampler_sees_a_blocked_loop() -> None:
    async def block() -> LagSampler:
        sampler = LagSampler(interval_s=0.01)
        sampler.start()
        await asyncio.sleep(0.02)
        busy_until = time.perf_counter() + 0.1
        while time.perf_counter() < busy_until:  # the loop cannot run the sampler now
            pass
        await asyncio.sleep(0.03)
        sampler.stop()
        return sampler

    sampler = asyncio.run(block())
    # A tick due during the 100 ms block ran at least 100 - 10 ms late.
    assert max(sampler.samples_ns) >= 90_000_000


def test_saturated_client_makes_the_run_invalid(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(runner, "LAG_LIMIT_MS", -1.0)  # any lag at all counts
    sc = Scenario(input_tokens=8, output_tokens=8, requests=2, warmup=0)
    with running_detserver(tmp_path, ttft_ms=30, itl_ms=10) as server:  # 100 ms a request: lag samples
        result = runner.measure(runner.Subject(server.target(), model="m", backend="d"), sc)
    assert result.loop_lag_ms is not None
    assert any(
        reason.startswith("invalid measurement: client saturated, event-loop lag p99")
        for reason in result.invalid
    )


@pytest.mark.parametrize(
    ("late", "saturated"),
    [((), False), ((10.1,), False), ((10.1, 12.0), True)],
    ids=["quiet", "one-stall", "late-again"],
)
def test_one_stall_is_not_a_saturated_client(late: tuple[float, ...], saturated: bool) -> None:
    # 30 quiet samples: the p99 of a short run is its largest sample, so one stall alone reaches it.
    samples = (0.5,) * 30 + late
    sc = Scenario(input_tokens=8, output_tokens=8, requests=2, warmup=0)
    load = LoadResult((), distribution(samples), stopped_early=False, lag_samples_ms=samples)
    reasons = runner.invalid_reasons(summarize((), sc), sc, load)
    assert any("client saturated" in reason for reason in reasons) is saturated
    if saturated:
        assert "(2 of 32 samples late)" in reasons[0]


@pytest.mark.parametrize(("every", "valid"), [(20, True), (10, False)])
def test_output_length_misses_over_5_percent_are_invalid(tmp_path: Path, every: int, valid: bool) -> None:
    args = ["--fault-every", str(every)]
    sc = Scenario(input_tokens=16, output_tokens=8, concurrency=4, requests=20, warmup=0)
    with running_detserver(tmp_path, ttft_ms=2, itl_ms=1, fault="early-eos", args=args) as server:
        result = runner.measure(runner.Subject(server.target(), model="m", backend="d"), sc)
    assert result.summary.completed == 20
    assert result.summary.output_length_misses == 20 // every
    reasons = [r for r in result.invalid if "output tokens" in r]
    if valid:
        assert reasons == []
    else:
        assert reasons == [
            "invalid measurement: 2 of 20 requests returned != 8 output tokens (got 4); "
            "the server did not honour the output length: where the engine honours ignore_eos (vLLM, "
            "llama-server, SGLang), add --llm-server-option ignore_eos=true"
        ]


def test_server_dying_mid_run_returns_error_records(tmp_path: Path) -> None:
    seen: list[RequestRecord] = []
    sc = Scenario(input_tokens=16, output_tokens=8, concurrency=2, requests=10, warmup=1)
    with running_detserver(tmp_path, ttft_ms=2, itl_ms=1, fault="die-after=4") as server:
        result = runner.measure(
            runner.Subject(server.target(), model="m", backend="d"), sc, on_record=seen.append
        )
    assert len(result.records) == 11
    assert [r.request_id for r in seen] == [r.request_id for r in result.records]
    assert 1 <= result.summary.completed <= 4
    assert result.summary.errors == 10 - result.summary.completed
    assert all(r.error for r in result.measured if not r.ok)


def test_measure_end_to_end(tmp_path: Path) -> None:
    sc = Scenario(input_tokens=32, output_tokens=16, concurrency=4, requests=12, warmup=2)
    with running_detserver(tmp_path, ttft_ms=20, itl_ms=2) as server:
        result = runner.measure(
            runner.Subject(server.target("chat", usage_per_chunk=True), model="m", backend="d"), sc
        )
        stamps = server.stamps()
    s = result.summary
    assert (s.requests, s.completed, s.errors, s.output_length_misses) == (12, 12, 0, 0)
    assert s.output_tokens_mean == 16.0
    assert s.input_tokens_mean == 32.0
    assert len({r.request_id for r in result.records}) == 14
    assert all(r.request_id in stamps for r in result.records)
    # Server-side truth bounds the client's TTFT from below (causality).
    assert s.ttft_ms is not None
    assert s.ttft_ms.min >= 20.0
    assert s.itl_ms is not None
    assert s.itl_ms.count == 12 * 15
    assert loadgen.LAG_INTERVAL_S > 0


def test_measure_from_inside_a_running_loop(tmp_path: Path) -> None:
    """An async caller (pytest-asyncio, a notebook) gets the run on its own thread's loop."""

    async def caller(server_target: object) -> int:
        sc = Scenario(input_tokens=8, output_tokens=4, requests=2, warmup=0)
        result = runner.measure(runner.Subject(server_target, model="m", backend="d"), sc)  # type: ignore[arg-type]
        return result.summary.completed

    with running_detserver(tmp_path, ttft_ms=2, itl_ms=1) as server:
        assert asyncio.run(caller(server.target())) == 2


def test_connections_open_after_warmup_and_before_the_measured_phase() -> None:
    fake = FakeServer(warmups=2)
    events: list[tuple[str, int]] = []

    async def send(index: int, scheduled_ns: int) -> Done:
        events.append(("send", index))
        return await fake.send(index, scheduled_ns)

    async def connect(streams: int) -> None:
        events.append(("connect", streams))

    sc = Scenario(input_tokens=8, output_tokens=3, concurrency=3, requests=6, warmup=2)
    asyncio.run(
        run_load(
            send, sc, on_measured=lambda: events.append(("measured", 0)), control=Control(connect=connect)
        )
    )
    assert sorted(events[:2]) == [("send", 0), ("send", 1)]
    assert events[2:4] == [("connect", 3), ("measured", 0)]
    assert sorted(events[4:]) == [("send", i) for i in range(2, 8)]


def test_a_stop_from_outside_ends_the_run() -> None:
    fake = FakeServer()
    sc = Scenario(input_tokens=8, output_tokens=3, concurrency=2, requests=50, warmup=0)

    async def run() -> loadgen.LoadResult:
        halt = asyncio.Event()

        def seen(rec: RequestRecord) -> None:
            if rec.request_id == "r4":
                halt.set()

        return await run_load(fake.send, sc, on_record=seen, control=Control(stop=halt))

    result = asyncio.run(run())
    assert 5 <= len(result.records) < 5 + 2 * sc.concurrency
    assert result.stopped_early


def test_a_shared_arrival_schedule_starts_where_on_measured_says() -> None:
    fake = FakeServer()
    sc = Scenario(input_tokens=8, output_tokens=3, concurrency=4, requests=3, warmup=0, rate=1.0)
    offsets = [0, 1_000_000, 3_000_000]  # this worker's part of a schedule, not the rate's own

    async def run() -> tuple[loadgen.LoadResult, int]:
        start = time.perf_counter_ns() + 5_000_000

        async def measured() -> int:
            return start

        return await run_load(
            fake.send, sc, on_measured=measured, control=Control(arrivals_ns=offsets)
        ), start

    result, start = asyncio.run(run())
    assert sorted(r.scheduled_ns - start for r in result.records) == offsets
    assert all(r.sent_ns >= r.scheduled_ns for r in result.records)


@dataclass(frozen=True)
class Ended:
    rec: RequestRecord
    eof_ns: int

    def record(self) -> RequestRecord:
        return self.rec


def test_every_finished_request_is_a_free_lag_probe() -> None:
    fake = FakeServer()
    sc = Scenario(input_tokens=8, output_tokens=3, concurrency=1, requests=5, warmup=0)

    async def send(index: int, scheduled_ns: int) -> Ended:
        done = await fake.send(index, scheduled_ns)
        return Ended(done.rec, time.perf_counter_ns() - 3_000_000)  # its last read, 3 ms before it resumed

    result = asyncio.run(run_load(send, sc))
    probes = [v for v in result.lag_samples_ms if v >= 3.0]
    assert len(probes) == 5  # no timer tick in so short a run could be 3 ms late on an idle loop
    assert result.loop_lag_ms is not None
    assert result.loop_lag_ms.count == len(result.lag_samples_ms)

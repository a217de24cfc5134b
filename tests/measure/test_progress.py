"""Live progress of a case: lines on an interval from the measurement's own loop, derived counts."""

from __future__ import annotations

import asyncio

from pytest_llmperf.measure.progress import LiveProgress
from pytest_llmperf.records import RequestRecord, Scenario


def done(i: int, tokens: int = 10, *, warmup: bool = False, ok: bool = True) -> RequestRecord:
    return RequestRecord(
        request_id=f"r{i}", scenario="s", input_tokens_requested=8, output_tokens_requested=tokens,
        scheduled_ns=0, sent_ns=0, end_ns=1, chunk_ns=(1,) if ok else (),
        output_tokens=tokens if ok else None, warmup=warmup, error=None if ok else "HTTP 500",
    )  # fmt: skip


def test_lines_count_done_in_flight_and_recent_tokens() -> None:
    now = [100.0]
    lines: list[str] = []
    live = LiveProgress(
        lines.append, "test_x[m]", Scenario(8, 10, concurrency=4, requests=10), 5.0, lambda: now[0]
    )
    live._started = live._last = now[0]
    live.on_record(done(0, warmup=True))  # warm-up is not progress
    for i in range(3):
        live.on_record(done(i))
    live.on_record(done(9, ok=False))
    now[0] += 5
    live.emit_line()
    assert lines == [
        "test_x[m]: 4 of 10 requests done, 4 in flight, 6 output tok/s over the last 5 s, 5 s in"
    ]
    for i in range(4, 10):
        live.on_record(done(i))
    now[0] += 10
    live.emit_line()
    assert (
        lines[-1]
        == "test_x[m]: 10 of 10 requests done, 0 in flight, 6 output tok/s over the last 10 s, 15 s in"
    )


def test_an_open_loop_has_in_flight_what_is_due_and_not_done() -> None:
    live = LiveProgress(None, "t", Scenario(8, 10, concurrency=4, requests=100, rate=2.0))
    assert live.in_flight(0.0) == 1  # the first arrival is due at once
    assert live.in_flight(10.0) == 4  # 21 due, none done: at most the cap
    for i in range(19):
        live.on_record(done(i))
    assert live.in_flight(10.0) == 2


def test_the_timer_runs_on_the_measurements_loop_and_stops_with_it() -> None:
    lines: list[str] = []

    async def measured_phase() -> None:
        live = LiveProgress(lines.append, "t", Scenario(8, 10, requests=4), interval_s=0.05)
        live.start()
        await asyncio.sleep(0.18)
        live.stop()
        await asyncio.sleep(0.1)

    asyncio.run(measured_phase())
    assert len(lines) == 3  # at 0.05, 0.10, 0.15 s; none after stop()
    assert all(line.startswith("t: 0 of 4 requests done, 1 in flight") for line in lines)


def test_no_emit_means_no_timer() -> None:
    async def measured_phase() -> None:
        live = LiveProgress(None, "t", Scenario(8, 10))
        live.start()
        assert live._handle is None

    asyncio.run(measured_phase())


def test_without_a_running_loop_records_drive_the_lines() -> None:
    # The parent of client worker processes waits on their pipes, not on an event loop.
    now = [100.0]
    lines: list[str] = []
    live = LiveProgress(lines.append, "t", Scenario(8, 10, concurrency=2, requests=6), 5.0, lambda: now[0])
    live.start()  # no running loop here: no timer, no error
    live.on_record(done(0))
    assert lines == []  # not an interval yet
    now[0] += 5
    live.on_record(done(1))
    assert lines == ["t: 2 of 6 requests done, 2 in flight, 4 output tok/s over the last 5 s, 5 s in"]
    now[0] += 1
    live.on_record(done(2))
    assert len(lines) == 1  # the next line waits for the next interval
    live.stop()
    now[0] += 60
    live.on_record(done(3))
    assert len(lines) == 1  # stopped: a late record emits nothing

"""Client workers: how a run is split, and N real processes measuring one run against the detserver.

Stamps from different processes are compared only causally (a worker cannot
read a token before the server wrote it), so these checks hold on a loaded
machine too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_llmperf.errors import LlmPerfError
from pytest_llmperf.measure import runner, workers
from pytest_llmperf.measure.loadgen import arrival_offsets_ns
from pytest_llmperf.measure.workers import Part, proportional, shares, split
from pytest_llmperf.records import RequestRecord, Scenario
from pytest_llmperf.telemetry.cpuload import PsutilClientReader
from pytest_llmperf.testing.harness import DetServer, running_detserver


@pytest.fixture
def pool() -> Iterator[workers.WorkerPool]:
    yield workers.pool(2)
    workers.close_pool()


def test_shares_and_proportions_are_exact() -> None:
    assert shares(7, 3) == [3, 2, 2]
    assert shares(1, 3) == [1, 0, 0]
    assert proportional(10, [3, 2, 2]) == [4, 3, 3]
    assert proportional(20, [1, 1]) == [10, 10]
    assert sum(proportional(1001, [5, 3, 1])) == 1001


def test_a_closed_loop_is_split_by_streams() -> None:
    sc = Scenario(input_tokens=8, output_tokens=8, concurrency=5, requests=20, warmup=3, adaptive=True)
    parts = split(sc, 2)
    assert [p.scenario.concurrency for p in parts] == [3, 2]
    assert [p.scenario.requests for p in parts] == [12, 8]
    assert [p.scenario.warmup for p in parts] == [2, 1]
    assert parts[0].indices == (0, 1, *range(3, 15))
    assert parts[1].indices == (2, *range(15, 23))
    assert not any(p.scenario.adaptive for p in parts)  # the parent stops the merged run
    assert [p.arrivals_ns for p in parts] == [None, None]


def test_never_more_workers_than_streams() -> None:
    sc = Scenario(input_tokens=8, output_tokens=8, concurrency=2, requests=4, warmup=0)
    assert len(split(sc, 8)) == 2


def test_a_rate_is_split_by_arrivals_of_one_schedule() -> None:
    sc = Scenario(input_tokens=8, output_tokens=8, concurrency=4, requests=7, warmup=0, rate=50.0, seed=3)
    parts = split(sc, 2)
    offsets = arrival_offsets_ns(sc)
    assert parts == [
        Part((0, 2, 4, 6), parts[0].scenario, tuple(offsets[0::2])),
        Part((1, 3, 5), parts[1].scenario, tuple(offsets[1::2])),
    ]
    assert [p.scenario.concurrency for p in parts] == [2, 2]


def run_over_workers(
    server: DetServer, sc: Scenario, size: int = 2, **kwargs: object
) -> tuple[runner.loadgen.LoadResult, list[RequestRecord]]:
    prepared, _ = runner.prepare_requests(server.target(), sc)
    seen: list[RequestRecord] = []
    settings = runner.ClientSettings(workers=size, **kwargs)  # type: ignore[arg-type]
    load = runner.run_prepared(prepared, sc, on_record=seen.append, settings=settings)
    return load, seen


def test_two_workers_measure_one_run(det: DetServer, pool: workers.WorkerPool) -> None:
    sc = Scenario(input_tokens=16, output_tokens=8, concurrency=6, requests=24, warmup=2)
    measured_at: list[int] = []
    prepared, _ = runner.prepare_requests(det.target(), sc)
    load = runner.run_prepared(
        prepared,
        sc,
        on_measured=lambda: measured_at.append(time.perf_counter_ns()),
        settings=runner.ClientSettings(workers=2),
    )
    stamps = det.stamps()
    assert sorted(r.request_id for r in load.records) == sorted(p.request_id for p in prepared)
    assert [r.warmup for r in load.records[:2]] == [True, True]  # warm-up first, in every worker
    assert all(r.ok for r in load.records)
    for r in load.records:
        s = stamps[r.request_id]
        assert r.sent_ns <= s["recv_ns"] <= s["first_ns"] <= r.chunk_ns[0]  # one clock across processes
    assert len(measured_at) == 1
    assert all(r.sent_ns >= measured_at[0] for r in load.records if not r.warmup)
    report = load.client
    assert report is not None
    assert report.workers == 2
    assert report.connections.opened == 6  # one per stream, opened before the measured phase
    assert report.connections.retries == 0
    assert report.cpu_s is not None
    assert report.cpu_s > 0
    assert load.loop_lag_ms is not None
    assert load.loop_lag_ms.count == len(load.lag_samples_ms) >= 24  # a probe per measured request
    assert len(pool.pids) == 2
    assert workers.client_pids() == pool.pids


def test_adaptive_stopping_works_on_the_merged_stream(det: DetServer, pool: workers.WorkerPool) -> None:
    sc = Scenario(
        input_tokens=16, output_tokens=8, concurrency=4, requests=200, warmup=0, adaptive=True, min_requests=8
    )
    load, _ = run_over_workers(det, sc)
    assert load.stopped_early  # the deterministic server is precise at once
    assert 8 <= len(load.records) < 100  # well short of the 200 asked for, stop messages take a moment


def test_a_rate_over_workers_keeps_one_schedule(det: DetServer, pool: workers.WorkerPool) -> None:
    sc = Scenario(
        input_tokens=16, output_tokens=4, concurrency=4, requests=12, warmup=0, rate=200.0, arrival="constant"
    )
    load, _ = run_over_workers(det, sc)
    start = min(r.scheduled_ns for r in load.records)
    assert sorted(r.scheduled_ns - start for r in load.records) == arrival_offsets_ns(sc)
    assert all(r.ok for r in load.records)


def test_per_request_connections_over_workers(det: DetServer, pool: workers.WorkerPool) -> None:
    sc = Scenario(input_tokens=16, output_tokens=4, concurrency=4, requests=8, warmup=0)
    load, _ = run_over_workers(det, sc, keep_alive=False)
    assert load.client is not None
    assert load.client.connections.opened == 8


def test_workers_are_pinned_where_told(pool: workers.WorkerPool) -> None:
    cores = sorted(os.sched_getaffinity(0))
    pool.pin([cores[-1]])
    assert all(os.sched_getaffinity(pid) == {cores[-1]} for pid in pool.pids)
    pool.pin(None)
    assert all(os.sched_getaffinity(pid) == set(cores) for pid in pool.pids)


def test_a_worker_that_dies_fails_the_run_in_one_line(tmp_path: Path, pool: workers.WorkerPool) -> None:
    sc = Scenario(input_tokens=16, output_tokens=8, concurrency=2, requests=40, warmup=0)
    victim = pool.pids[1]
    with running_detserver(tmp_path, ttft_ms=5, itl_ms=5) as server:
        prepared, _ = runner.prepare_requests(server.target(), sc)
        killed = threading.Event()

        def kill_once(rec: RequestRecord) -> None:
            if not killed.is_set():
                killed.set()
                os.kill(victim, signal.SIGKILL)

        with pytest.raises(
            LlmPerfError, match=r"client worker 1 \(pid \d+\) exited with code -9 during the run"
        ):
            runner.run_prepared(prepared, sc, on_record=kill_once, settings=runner.ClientSettings(workers=2))
        assert workers.client_pids() == ()  # the broken pool is gone; the next run starts a fresh one
        load, _ = run_over_workers(
            server, Scenario(input_tokens=16, output_tokens=4, concurrency=2, requests=4)
        )
    assert len(load.records) == 5


def test_telemetry_counts_worker_processes_as_the_client() -> None:
    spinner = subprocess.Popen(
        [sys.executable, "-c", "import time\nend = time.time() + 3\nwhile time.time() < end: pass"]
    )
    try:
        with_child = PsutilClientReader(extra_pids=lambda: [spinner.pid])
        alone = PsutilClientReader()
        start = time.perf_counter()
        with_child.read(start)
        alone.read(start)
        time.sleep(0.5)
        now = time.perf_counter()
        busy, idle = with_child.read(now), alone.read(now)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy is not None
    assert idle is not None
    assert busy - idle > 0.3  # the spinning worker's core is the client's (a shared machine gives it less)


def test_a_pool_runs_one_job_after_another_with_idle_time_between(
    det: DetServer, pool: workers.WorkerPool
) -> None:
    # Between two tests the workers wait for their next job. The job's event loop watched the
    # jobs pipe (which left it non-blocking); a worker that then read an empty pipe took it for
    # a parent gone, exited, and the next run broke its pipe (seen across a session's tests).
    sc = Scenario(input_tokens=16, output_tokens=4, concurrency=4, requests=8, warmup=0)
    first, _ = run_over_workers(det, sc)
    pids = pool.pids
    time.sleep(0.5)  # the workers are idle in their loop now, reading an empty jobs pipe
    assert pool.alive(), "a worker exited while idle"
    second, _ = run_over_workers(det, sc)
    assert pool.pids == pids
    assert all(r.ok for r in (*first.records, *second.records))

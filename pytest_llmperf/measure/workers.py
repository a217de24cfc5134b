"""Client workers: the same raw-socket client in N processes, merged into one run.

One Python event loop stamps every read of every stream; past a few hundred
streams it falls behind (the lag guard then marks the run invalid). With
``workers > 1`` a ``WorkerPool`` of that many processes (started once, kept
for the session) each runs ``loadgen.run_load`` with ``client.Connections``
on its share of the run: its streams and the requests for them in a closed
loop, every N-th arrival of the one schedule for a rate. The parent process
only hands out the prepared requests and collects:

* warm-up in every worker, then each opens its connections and reports
  ``warm``; when all have, the parent calls ``on_measured`` (telemetry starts)
  and sends ``go`` with a common start a few milliseconds ahead, the zero of
  the arrival schedule;
* records stream back as each request is parsed (in the worker, off its
  stamping path); the parent passes each to ``on_record`` and runs adaptive
  stopping on the merged stream, telling every worker to ``stop`` when the
  intervals are tight enough;
* each worker ends with its raw event-loop lag samples, its connection
  counts and the CPU it used over the measured phase, so the lag guard
  and the client's CPU cover every process.

Stamps are ``perf_counter_ns`` (CLOCK_MONOTONIC, one clock per host), so
records from different processes merge exactly. Workers are pinned to the
cores they are given where the OS allows; what runs inside one is
``workerproc``. This module must not parse responses itself (the worker's
loadgen does) or write files.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from pytest_llmperf.errors import LlmPerfError
from pytest_llmperf.measure import loadgen, workerproc
from pytest_llmperf.measure.client import ClientReport, ConnectionStats, Prepared
from pytest_llmperf.measure.stats import distribution
from pytest_llmperf.measure.workerproc import Job, WorkerDone
from pytest_llmperf.records import RequestRecord, Scenario

_now = time.perf_counter_ns

GO_AHEAD_NS = 5_000_000
"""The common start is this far ahead of ``go``, so every worker has it before the first arrival."""
START_TIMEOUT_S = 60.0
"""A worker that has not answered its first job by then is reported as stuck."""


@dataclass(frozen=True)
class Part:
    """Which prepared requests (global indices) and which load a worker gets."""

    indices: tuple[int, ...]
    scenario: Scenario
    arrivals_ns: tuple[int, ...] | None


def shares(total: int, n: int) -> list[int]:
    """``total`` split over ``n`` as evenly as whole numbers allow, larger shares first."""
    return [total // n + (1 if k < total % n else 0) for k in range(n)]


def proportional(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainder, ties to the first)."""
    whole = sum(weights)
    quotas = [total * w / whole for w in weights]
    counts = [int(q) for q in quotas]
    order = sorted(range(len(weights)), key=lambda k: (counts[k] - quotas[k], k))
    for k in order[: total - sum(counts)]:
        counts[k] += 1
    return counts


def split(scenario: Scenario, workers: int) -> list[Part]:
    """Each worker's part of ``scenario``: never more workers than streams.

    Closed loop: worker k keeps its share of the streams busy with requests
    in proportion to them. Rate: worker k sends arrivals k, k+N, ... of the
    one schedule, with its share of the in-flight cap. Warm-up is split the
    same way; adaptive stopping is decided by the parent, so parts have it off.
    """
    n = max(1, min(workers, scenario.concurrency))
    streams = shares(scenario.concurrency, n)
    warm = shares(scenario.warmup, n)
    warm_at = [sum(warm[:k]) for k in range(n)]
    if scenario.rate is None:
        counts = proportional(scenario.requests, streams)
        starts = [scenario.warmup + sum(counts[:k]) for k in range(n)]
        measured = [tuple(range(starts[k], starts[k] + counts[k])) for k in range(n)]
        arrivals: list[tuple[int, ...] | None] = [None] * n
    else:
        offsets = loadgen.arrival_offsets_ns(scenario)
        measured = [
            tuple(range(scenario.warmup + k, scenario.warmup + scenario.requests, n)) for k in range(n)
        ]
        arrivals = [tuple(offsets[k::n]) for k in range(n)]
    parts = []
    for k in range(n):
        indices = tuple(range(warm_at[k], warm_at[k] + warm[k])) + measured[k]
        local = replace(
            scenario,
            concurrency=streams[k],
            requests=len(measured[k]),
            warmup=warm[k],
            adaptive=False,
        )
        parts.append(Part(indices, local, arrivals[k]))
    return parts


# -- the parent's side --------------------------------------------------------------------------


@dataclass
class _Worker:
    process: BaseProcess
    jobs: Connection
    results: Connection


class WorkerPool:
    """``size`` client processes, started once and reused by every run until ``close``."""

    def __init__(self, size: int) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process with threads
        self.size = size
        self._workers: list[_Worker] = []
        for k in range(size):
            jobs_r, jobs_w = ctx.Pipe(duplex=False)
            results_r, results_w = ctx.Pipe(duplex=False)
            process = ctx.Process(
                target=workerproc.worker_main,
                args=(jobs_r, results_w),
                name=f"llmperf-client-{k}",
                daemon=True,
            )
            process.start()
            jobs_r.close()
            results_w.close()
            self._workers.append(_Worker(process, jobs_w, results_r))

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(w.process.pid for w in self._workers if w.process.pid is not None)

    def alive(self) -> bool:
        return all(w.process.is_alive() for w in self._workers)

    def pin(self, cores: Sequence[int] | None) -> None:
        """Worker k on core ``cores[k % len(cores)]``; ``None`` lets them run anywhere allowed."""
        allowed = os.sched_getaffinity(0)
        for k, w in enumerate(self._workers):
            if w.process.pid is None:
                continue
            mask = {cores[k % len(cores)]} if cores else allowed
            with contextlib.suppress(OSError):
                os.sched_setaffinity(w.process.pid, mask)

    def run(
        self,
        prepared: Sequence[Prepared],
        scenario: Scenario,
        *,
        keep_alive: bool,
        on_record: Callable[[RequestRecord], None] | None,
        on_measured: Callable[[], None] | None,
    ) -> loadgen.LoadResult:
        """Run ``scenario`` over the workers and merge what they measured."""
        parts = split(scenario, self.size)
        busy = self._workers[: len(parts)]
        for w, part in zip(busy, parts, strict=True):
            job = Job(tuple(prepared[i] for i in part.indices), part.scenario, part.arrivals_ns, keep_alive)
            w.jobs.send(("run", job))
        run = _Collect(busy, scenario, on_record, on_measured)
        by_fd = {w.results.fileno(): k for k, w in enumerate(busy)}
        while len(run.done) < len(busy):
            waiting = [w.results for k, w in enumerate(busy) if k not in run.done]
            ready = wait(waiting, timeout=START_TIMEOUT_S)
            if not ready:
                self._check_alive(busy, run.done)
            for conn in ready:
                k = by_fd[conn.fileno()]  # type: ignore[union-attr]
                try:
                    message: tuple[Any, ...] = busy[k].results.recv()
                except (EOFError, OSError):
                    self._check_alive(busy, run.done, force=k)
                    raise  # pragma: no cover - _check_alive raises for worker k
                run.handle(k, message)
        return run.result(keep_alive)

    def _check_alive(
        self, busy: list[_Worker], done: dict[int, WorkerDone], force: int | None = None
    ) -> None:
        for k, w in enumerate(busy):
            if k in done:
                continue
            if force == k or not w.process.is_alive():
                w.process.join(timeout=1.0)
                raise LlmPerfError(
                    f"client worker {k} (pid {w.process.pid}) exited with code {w.process.exitcode} "
                    "during the run; what it measured before is in the request log"
                )

    def close(self) -> None:
        """Tell every worker to exit; terminate the ones that do not."""
        for w in self._workers:
            with contextlib.suppress(OSError, ValueError):
                w.jobs.send(None)
        for w in self._workers:
            w.process.join(timeout=2.0)
            if w.process.is_alive():
                w.process.terminate()
                w.process.join(timeout=2.0)
            for conn in (w.jobs, w.results):
                with contextlib.suppress(OSError):
                    conn.close()
        self._workers = []


class _Collect:
    """The parent's view of one run over several workers: records in, stop and go out."""

    def __init__(
        self,
        busy: list[_Worker],
        scenario: Scenario,
        on_record: Callable[[RequestRecord], None] | None,
        on_measured: Callable[[], None] | None,
    ) -> None:
        self.busy = busy
        self.scenario = scenario
        self.on_record = on_record
        self.on_measured = on_measured
        self.records: list[RequestRecord] = []
        self.measured: list[RequestRecord] = []
        self.adaptive = loadgen.AdaptiveStop(scenario)
        self.warm = 0
        self.done: dict[int, WorkerDone] = {}
        self.cpu_from = time.process_time()
        self.stopped = False

    def tell(self, message: tuple[Any, ...]) -> None:
        for w in self.busy:
            with contextlib.suppress(OSError):
                w.jobs.send(message)

    def handle(self, k: int, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "records":
            for rec in message[1]:
                self.records.append(rec)
                if self.on_record is not None:
                    self.on_record(rec)
                if not rec.warmup:
                    self.measured.append(rec)
                    if not self.stopped and self.adaptive.reached(self.measured):
                        self.stopped = True
                        self.tell(("stop",))
        elif kind == "warm":
            self.warm += 1
            if self.warm == len(self.busy):
                if self.on_measured is not None:
                    self.on_measured()
                self.cpu_from = time.process_time()  # this process's share: collecting, telemetry
                self.tell(("go", _now() + GO_AHEAD_NS))
        elif kind == "done":
            done: WorkerDone = message[1]
            self.done[k] = done
            if done.error and not self.stopped:
                # The others may be waiting for a go that will never come: end their shares.
                self.stopped = True
                self.tell(("stop",))

    def result(self, keep_alive: bool) -> loadgen.LoadResult:
        failed = [d.error for d in self.done.values() if d.error]
        if failed:
            raise LlmPerfError(f"a client worker failed during the run: {failed[0]}")
        parent_cpu = time.process_time() - self.cpu_from
        lag = tuple(v for d in self.done.values() for v in d.lag_samples_ms)
        report = ClientReport(
            workers=len(self.busy),
            keep_alive=keep_alive,
            connections=sum((d.connections for d in self.done.values()), ConnectionStats()),
            cpu_s=parent_cpu + sum(d.cpu_s for d in self.done.values()),
        )
        return loadgen.LoadResult(
            records=tuple(self.records),
            loop_lag_ms=distribution(lag),
            stopped_early=self.stopped and len(self.measured) < self.scenario.requests,
            lag_samples_ms=lag,
            client=report,
        )


_pool: WorkerPool | None = None


def pool(size: int) -> WorkerPool:
    """The process's worker pool of ``size`` workers, started on first use and kept."""
    global _pool  # noqa: PLW0603 - one pool of processes per pytest process, like a thread pool
    if _pool is not None and (_pool.size != size or not _pool.alive()):
        _pool.close()
        _pool = None
    if _pool is None:
        _pool = WorkerPool(size)
    return _pool


def close_pool() -> None:
    """Stop the worker pool, if one was started (the session's end, an interrupted run)."""
    global _pool  # noqa: PLW0603
    if _pool is not None:
        _pool.close()
        _pool = None


def client_pids() -> tuple[int, ...]:
    """The worker processes now running: their CPU is the client's, not someone else's."""
    return _pool.pids if _pool is not None else ()

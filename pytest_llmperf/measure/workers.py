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
cores they are given where the OS allows. A worker writes to the parent
through a non-blocking pipe transport, so a slow parent never stalls its
stamps; it ignores SIGINT (the parent handles Ctrl-C and stops it) and gets
SIGTERM if the parent dies. This module must not parse responses itself
(the worker's loadgen does) or write files.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import multiprocessing
import os
import pickle
import resource
import signal
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from pytest_llmperf.errors import LlmPerfError
from pytest_llmperf.measure import client, loadgen
from pytest_llmperf.measure.client import ClientReport, ConnectionStats, Prepared
from pytest_llmperf.measure.stats import distribution
from pytest_llmperf.records import RequestRecord, Scenario

_now = time.perf_counter_ns

GO_AHEAD_NS = 5_000_000
"""The common start is this far ahead of ``go``, so every worker has it before the first arrival."""
START_TIMEOUT_S = 60.0
"""A worker that has not answered its first job by then is reported as stuck."""


@dataclass(frozen=True)
class Job:
    """One worker's share of a run: its requests (warm-up first) and its part of the load."""

    prepared: tuple[Prepared, ...]
    scenario: Scenario
    arrivals_ns: tuple[int, ...] | None
    keep_alive: bool


@dataclass(frozen=True)
class WorkerDone:
    """What a worker says when its share is over."""

    lag_samples_ms: tuple[float, ...]
    cpu_s: float
    connections: ConnectionStats
    error: str | None = None


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


# -- the worker process --------------------------------------------------------------------------


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


class _Outbox(asyncio.Protocol):
    """The worker's side of the results pipe: buffered, never blocking the event loop.

    Frames are ``multiprocessing.connection``'s (a 4-byte big-endian length,
    then the pickle), so the parent reads them with ``Connection.recv``.
    Records are gathered and written once per loop turn.
    """

    def __init__(self) -> None:
        self.transport: asyncio.WriteTransport | None = None
        self.pending: list[RequestRecord] = []
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, message: object) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        assert self.transport is not None
        self.transport.write(struct.pack("!i", len(data)) + data)

    def record(self, rec: RequestRecord) -> None:
        if not self.pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self.pending.append(rec)

    def flush(self) -> None:
        if self.pending:
            batch, self.pending = self.pending, []
            self.send(("records", batch))

    async def close(self) -> None:
        self.flush()
        assert self.transport is not None
        self.transport.close()  # after the buffer is written
        await self.closed


async def _run_job(job: Job, jobs: Connection, results: Connection) -> None:
    loop = asyncio.get_running_loop()
    pipe = os.fdopen(os.dup(results.fileno()), "wb", buffering=0)
    _transport, out = await loop.connect_write_pipe(_Outbox, pipe)
    halt = asyncio.Event()
    go: asyncio.Future[int] = loop.create_future()

    def control() -> None:
        try:
            message = jobs.recv()
        except (EOFError, OSError):
            message = ("stop",)  # the parent is gone: finish quietly
        if message[0] == "go" and not go.done():
            go.set_result(message[1])
        elif message[0] == "stop":
            halt.set()
            if not go.done():
                go.set_result(_now())

    loop.add_reader(jobs.fileno(), control)
    connections = client.Connections(keep_alive=job.keep_alive)
    measured_from = [0.0]

    async def on_measured() -> int:
        out.send(("warm",))
        start = await go
        measured_from[0] = _cpu_s()
        return start

    async def send(index: int, scheduled_ns: int) -> client.Exchange:
        req = job.prepared[index]
        return await connections.exchange(req, scheduled_ns=scheduled_ns, timeout_s=job.scenario.timeout_s)

    async def connect(streams: int) -> None:
        if job.prepared:
            await connections.preconnect(job.prepared[-1], streams, job.scenario.timeout_s)

    try:
        load = await loadgen.run_load(
            send,
            job.scenario,
            out.record,
            on_measured,
            connect=connect,
            arrivals_ns=job.arrivals_ns,
            stop=halt,
        )
        cpu = _cpu_s() - measured_from[0]
    finally:
        loop.remove_reader(jobs.fileno())
        connections.close()
    out.send(("done", WorkerDone(load.lag_samples_ms, cpu, connections.stats)))
    await out.close()


def _worker_main(jobs: Connection, results: Connection) -> None:
    """A worker process: run each job it is sent on a fresh event loop, until told to exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    try:
        import uvloop

        run: Callable[[Any], None] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        run = asyncio.run
    while True:
        try:
            message = jobs.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        if message[0] != "run":
            continue  # a stop that came after this worker's share had already ended
        gc.disable()  # as in the parent's own runs: nothing here forms cycles worth a pause mid-stream
        try:
            run(_run_job(message[1], jobs, results))
        except Exception as exc:
            os.set_blocking(results.fileno(), True)
            results.send(("done", WorkerDone((), 0.0, ConnectionStats(), f"{type(exc).__name__}: {exc}")))
        finally:
            os.set_blocking(results.fileno(), True)
            gc.enable()


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
                target=_worker_main, args=(jobs_r, results_w), name=f"llmperf-client-{k}", daemon=True
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

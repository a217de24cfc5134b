"""Inside a client worker process: run each share of a run it is sent, report back.

``worker_main`` is the process's whole life: it waits for a ``Job`` (its
requests, warm-up first, and its part of the load), runs ``loadgen.run_load``
on a fresh event loop with its own ``client.Connections``, and ends each job
with a ``WorkerDone``. On the way it says ``warm`` (warm-up over, connections
open), waits for ``go`` (the common start), streams its records back once per
loop turn, and stops early on ``stop``. It writes to the parent through a
non-blocking pipe transport, so a slow parent never stalls its stamps; it
ignores SIGINT (the parent handles Ctrl-C) and gets SIGTERM if the parent
dies. This module must not decide how a run is split (``workers`` does).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import pickle
import resource
import signal
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from pytest_llmperf.measure import client, loadgen
from pytest_llmperf.measure.client import ConnectionStats, Prepared
from pytest_llmperf.records import RequestRecord, Scenario

_now = time.perf_counter_ns


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
            control=loadgen.Control(connect=connect, arrivals_ns=job.arrivals_ns, stop=halt),
        )
        cpu = _cpu_s() - measured_from[0]
    finally:
        loop.remove_reader(jobs.fileno())
        # Watching the pipe made it non-blocking (libuv's poll); the loop between jobs blocks on
        # it, and an empty non-blocking read there would look like the parent gone.
        os.set_blocking(jobs.fileno(), True)
        connections.close()
    out.send(("done", WorkerDone(load.lag_samples_ms, cpu, connections.stats)))
    await out.close()


def worker_main(jobs: Connection, results: Connection) -> None:
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

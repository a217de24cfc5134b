"""Load shapes: when each request is sent, and when a run stops.

* Closed loop (the default): ``concurrency`` workers, each sending its next
  request the moment its previous one ends, so exactly that many are in
  flight until the requests run out.
* Open loop (``Scenario.rate``): request i is *scheduled* at a constant or
  Poisson arrival time and sent then, unless ``concurrency`` requests are
  already in flight, in which case it waits. The wait (``sent_ns -
  scheduled_ns``) is client queue delay, reported on its own, never in TTFT.

* Conversations (``Scenario.turns`` > 1, closed loop): each worker takes the
  next conversation and sends its turns one after another, so turn k+1 is
  sent only once turn k has ended (its answer is part of the next prompt).

With ``Scenario.duration_s`` no request is started once that long has passed
since the measured phase began (``requests`` is then a cap); requests in
flight finish. Warm-up requests run first, to completion, marked
``warmup=True``; then ``connect`` opens a connection per stream of the
measured phase, so no measured request pays a connect. With
``Scenario.adaptive`` the run stops issuing requests once the 95% confidence
intervals of median TPOT and output tok/s are tight enough (see
``stats.precision_reached``); a ``stop`` event set from outside (the
collector of several client workers) stops it the same way. An event-loop
lag sampler runs alongside the measured phase: a late timer tick means
stamps were taken late too.

A client worker (``measure.workers``) runs this same code on its share of a
run: its streams, its requests, and for a rate its part of the one arrival
schedule (``arrivals_ns``) from the common start its ``on_measured`` returns.

This module must not parse responses or compute summaries, and must not
block the event loop: ``on_record`` is its only call out per request.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pytest_llmperf.measure.client import ClientReport
from pytest_llmperf.measure.stats import distribution, precision_reached
from pytest_llmperf.records import Distribution, RequestRecord, Scenario

_now = time.perf_counter_ns


class Finished(Protocol):
    """A request that has ended; ``record()`` parses it (``client.Exchange``).

    One that also has ``eof_ns`` (the stamp of its last read, as an exchange
    has) feeds the lag sampler a free probe: how long its task waited to
    resume after that read.
    """

    def record(self) -> RequestRecord: ...


SendFn = Callable[[int, int], Awaitable[Finished]]
"""``send(index, scheduled_ns)``: issue request ``index``, return once it has ended."""
ConnectFn = Callable[[int], Awaitable[None]]
"""``connect(streams)``: open that many connections before the measured phase starts."""

LAG_INTERVAL_S = 0.1
"""The lag sampler's timer period: 10 Hz.

Its tick wakes an idle loop, and on this kind of VM a wake-up costs 30-60 us
of CPU: at 50 Hz the timer alone was a third of the client's CPU at one
stream. Busy loops, where lag matters, get far more samples from the probes
that every finished request gives for free (``LagSampler.probe``).
"""


@dataclass(frozen=True)
class LoadResult:
    """What a load run produced, warm-up records first, in completion order."""

    records: tuple[RequestRecord, ...]
    loop_lag_ms: Distribution | None
    stopped_early: bool
    lag_samples_ms: tuple[float, ...] = ()
    """The lag sampler's raw samples, so several workers' runs merge into one distribution."""
    client: ClientReport | None = None
    """How the client ran (workers, connections, CPU), where the caller measured it."""


class AdaptiveStop:
    """``Scenario.adaptive``: whether the measured records so far are precise enough to stop.

    Checks at a growing stride (each check sorts all samples so far).
    """

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.next_check = scenario.min_requests

    def reached(self, measured: Sequence[RequestRecord]) -> bool:
        sc, n = self.scenario, len(measured)
        if not sc.adaptive or n < self.next_check:
            return False
        self.next_check = n + max(1, n // 20)
        return precision_reached(measured, sc.target_rel_ci)


class LagSampler:
    """Measures how late the event loop runs a callback.

    Every ``interval_s`` a timer callback compares when it runs with when it
    was due: that sees a thread the OS did not schedule (a starved client).
    ``probe(ended_ns)`` adds a sample with no timer: how long a request's
    task waited to resume after the read that ended it, which grows with
    everything else queued on the loop (a saturated client). Stamps are
    taken in callbacks too, so the lag is how late a stamp can be. Early
    firings (the loop's clock is coarser than ours) count as zero.
    """

    def __init__(self, interval_s: float = LAG_INTERVAL_S) -> None:
        self.interval_ns = int(interval_s * 1e9)
        self.interval_s = interval_s
        self.samples_ns: list[int] = []
        self._due = 0
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._arm()

    def _arm(self) -> None:
        assert self._loop is not None
        self._due = _now() + self.interval_ns
        self._handle = self._loop.call_later(self.interval_s, self._tick)

    def _tick(self) -> None:
        self.samples_ns.append(max(_now() - self._due, 0))
        self._arm()

    def probe(self, finished: object) -> None:
        """A sample from a request that just resumed after its last read (``eof_ns``)."""
        ended = getattr(finished, "eof_ns", 0)
        if ended and self._handle is not None:
            self.samples_ns.append(max(_now() - ended, 0))

    def stop(self) -> Distribution | None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        return distribution(self.samples_ms())

    def samples_ms(self) -> tuple[float, ...]:
        return tuple(v / 1e6 for v in self.samples_ns)


def arrival_offsets_ns(scenario: Scenario) -> list[int]:
    """When each measured request is due, relative to the start, for a rate."""
    if scenario.rate is None or scenario.rate <= 0:
        raise ValueError("arrival offsets need a positive rate")
    rate = scenario.rate
    if scenario.arrival == "constant":
        return [round(i / rate * 1e9) for i in range(scenario.requests)]
    rng = random.Random(scenario.seed)
    t = 0.0
    out = []
    for _ in range(scenario.requests):
        out.append(round(t * 1e9))
        t += rng.expovariate(rate)
    return out


class _Run:
    """One run's state. Ended requests go through a queue to a single parser
    task that handles one per loop turn, so a wave of requests ending
    together neither delays the next sends (closed loop) nor holds up the
    stamping of reads still streaming in."""

    def __init__(
        self,
        send: SendFn,
        scenario: Scenario,
        on_record: Callable[[RequestRecord], None] | None,
        halt: asyncio.Event | None = None,
    ) -> None:
        self.send = send
        self.scenario = scenario
        self.on_record = on_record
        self.records: list[RequestRecord] = []
        self.measured: list[RequestRecord] = []
        self._stop = False
        self._halt = halt
        self.expired = False
        self.adaptive = AdaptiveStop(scenario)
        self.lag = LagSampler()
        self.queue: asyncio.Queue[Finished | None] = asyncio.Queue()

    @property
    def stop(self) -> bool:
        """Issue nothing more: precise enough here, or told so from outside."""
        return self._stop or (self._halt is not None and self._halt.is_set())

    @stop.setter
    def stop(self, value: bool) -> None:
        self._stop = value

    async def parser(self) -> None:
        while (item := await self.queue.get()) is not None:
            self.finished(item.record())
            await asyncio.sleep(0)

    async def drain(self) -> None:
        """Run ``parser`` until everything queued so far is parsed."""
        self.queue.put_nowait(None)
        await self.parser()

    def finished(self, rec: RequestRecord) -> None:
        self.records.append(rec)
        if self.on_record is not None:
            self.on_record(rec)
        if rec.warmup:
            return
        self.measured.append(rec)
        if not self.stop and self.adaptive.reached(self.measured):
            self.stop = True

    async def closed(self, first: int, count: int, concurrency: int, warmup: bool) -> None:
        next_index = first
        end = first + count

        async def worker() -> None:
            nonlocal next_index
            while next_index < end and not (self.stop and not warmup):
                i = next_index
                next_index += 1
                finished = await self.send(i, _now())
                self.lag.probe(finished)
                self.queue.put_nowait(finished)

        await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))

    def expire(self) -> None:
        """``duration_s`` is over: start nothing more."""
        self.expired = self.stop = True

    async def conversations(self, first: int, count: int, turns: int, concurrency: int) -> None:
        """Closed loop over conversations of ``turns`` requests: indices ``first + conv * turns + turn``."""
        end = first + count
        starts = iter(range(first, end, turns))

        async def worker() -> None:
            for start in starts:
                for i in range(start, min(start + turns, end)):
                    if self.stop:
                        return
                    self.queue.put_nowait(await self.send(i, _now()))

        n_conversations = -(-count // turns)
        await asyncio.gather(*(worker() for _ in range(min(concurrency, n_conversations))))

    async def opened(self, first: int, offsets: Sequence[int], start: int) -> None:
        sc = self.scenario
        slots = asyncio.Semaphore(max(1, sc.concurrency))
        tasks: set[asyncio.Task[None]] = set()

        async def one(i: int, due: int) -> None:
            try:
                finished = await self.send(i, due)
                self.lag.probe(finished)
                self.queue.put_nowait(finished)
            finally:
                slots.release()

        for k, offset in enumerate(offsets):
            if self.stop:
                break
            due = start + offset
            wait = due - _now()
            if wait > 0:
                await asyncio.sleep(wait / 1e9)
            await slots.acquire()
            if self.stop:
                slots.release()
                break
            task = asyncio.create_task(one(first + k, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)


@dataclass(frozen=True)
class Control:
    """How a caller steers a run beyond its scenario.

    ``connect(streams)`` opens the measured streams' connections after
    warm-up; ``arrivals_ns`` replaces the schedule a rate gives (a worker's
    part of the run's one schedule); ``stop`` ends the run early when set,
    as adaptive stopping does.
    """

    connect: ConnectFn | None = None
    arrivals_ns: Sequence[int] | None = None
    stop: asyncio.Event | None = None


UNSTEERED = Control()


async def run_load(
    send: SendFn,
    scenario: Scenario,
    on_record: Callable[[RequestRecord], None] | None = None,
    on_measured: Callable[[], object] | None = None,
    *,
    control: Control = UNSTEERED,
) -> LoadResult:
    """Run warm-up then the measured requests; indices ``0..warmup-1`` are warm-up.

    ``control.connect`` runs after warm-up; ``on_measured`` is called once,
    after it, so telemetry can cover exactly the measured window. When
    ``on_measured`` returns an awaitable it is awaited, and an ``int`` it
    yields is the start of the arrival schedule (``perf_counter_ns``), which
    several workers share.
    """
    connect, arrivals_ns = control.connect, control.arrivals_ns
    run = _Run(send, scenario, on_record, control.stop)
    if scenario.warmup > 0:
        await run.closed(0, scenario.warmup, max(1, min(scenario.concurrency, scenario.warmup)), True)
        await run.drain()
    if connect is not None:
        await connect(max(1, scenario.concurrency))
    started: object = on_measured() if on_measured is not None else None
    if inspect.isawaitable(started):
        started = await started
    parser = asyncio.create_task(run.parser())
    sampler = run.lag
    sampler.start()
    deadline = (
        asyncio.get_running_loop().call_later(scenario.duration_s, run.expire)
        if scenario.duration_s
        else None
    )
    try:
        if scenario.rate is None and arrivals_ns is None and scenario.turns > 1:
            await run.conversations(scenario.warmup, scenario.requests, scenario.turns, scenario.concurrency)
        elif scenario.rate is None and arrivals_ns is None:
            await run.closed(scenario.warmup, scenario.requests, max(1, scenario.concurrency), False)
        else:
            offsets = arrivals_ns if arrivals_ns is not None else arrival_offsets_ns(scenario)
            start = started if isinstance(started, int) else _now()
            await run.opened(scenario.warmup, offsets, start)
    finally:
        if deadline is not None:
            deadline.cancel()
        lag = sampler.stop()
        run.queue.put_nowait(None)
        await parser
    stopped_early = run.stop and not run.expired and len(run.measured) < scenario.requests
    return LoadResult(
        records=tuple(run.records),
        loop_lag_ms=lag,
        stopped_early=stopped_early,
        lag_samples_ms=sampler.samples_ms(),
    )

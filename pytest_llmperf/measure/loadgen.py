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
flight finish. Warm-up requests run first, to completion, marked ``warmup=True``. With
``Scenario.adaptive`` the run stops issuing requests once the 95% confidence
intervals of median TPOT and output tok/s are tight enough (see
``stats.precision_reached``). An event-loop lag sampler runs alongside the
measured phase: a late timer tick means stamps were taken late too.

This module must not parse responses or compute summaries, and must not
block the event loop: ``on_record`` is its only call out per request.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from pytest_llmperf.measure.stats import distribution, precision_reached
from pytest_llmperf.records import Distribution, RequestRecord, Scenario

_now = time.perf_counter_ns


class Finished(Protocol):
    """A request that has ended; ``record()`` parses it (``client.Exchange``)."""

    def record(self) -> RequestRecord: ...


SendFn = Callable[[int, int], Awaitable[Finished]]
"""``send(index, scheduled_ns)``: issue request ``index``, return once it has ended."""

LAG_INTERVAL_S = 0.02


@dataclass(frozen=True)
class LoadResult:
    """What a load run produced, warm-up records first, in completion order."""

    records: tuple[RequestRecord, ...]
    loop_lag_ms: Distribution | None
    stopped_early: bool


class LagSampler:
    """Measures how late the event loop runs a timer callback.

    Every ``interval_s`` a callback compares when it runs with when it was due.
    Stamps are taken in callbacks too, so the lag is how late a stamp can be.
    Early firings (the loop's clock is coarser than ours) count as zero.
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

    def stop(self) -> Distribution | None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        return distribution(v / 1e6 for v in self.samples_ns)


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
        self, send: SendFn, scenario: Scenario, on_record: Callable[[RequestRecord], None] | None
    ) -> None:
        self.send = send
        self.scenario = scenario
        self.on_record = on_record
        self.records: list[RequestRecord] = []
        self.measured: list[RequestRecord] = []
        self.stop = False
        self.expired = False
        self.next_check = scenario.min_requests
        self.queue: asyncio.Queue[Finished | None] = asyncio.Queue()

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
        sc = self.scenario
        n = len(self.measured)
        # Re-check at a growing stride: each check sorts all samples so far.
        if sc.adaptive and not self.stop and n >= self.next_check:
            self.next_check = n + max(1, n // 20)
            if precision_reached(self.measured, sc.target_rel_ci):
                self.stop = True

    async def closed(self, first: int, count: int, concurrency: int, warmup: bool) -> None:
        next_index = first
        end = first + count

        async def worker() -> None:
            nonlocal next_index
            while next_index < end and not (self.stop and not warmup):
                i = next_index
                next_index += 1
                self.queue.put_nowait(await self.send(i, _now()))

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

    async def opened(self, first: int) -> None:
        sc = self.scenario
        slots = asyncio.Semaphore(sc.concurrency)
        tasks: set[asyncio.Task[None]] = set()

        async def one(i: int, due: int) -> None:
            try:
                self.queue.put_nowait(await self.send(i, due))
            finally:
                slots.release()

        start = _now()
        for k, offset in enumerate(arrival_offsets_ns(sc)):
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


async def run_load(
    send: SendFn,
    scenario: Scenario,
    on_record: Callable[[RequestRecord], None] | None = None,
    on_measured: Callable[[], None] | None = None,
) -> LoadResult:
    """Run warm-up then the measured requests; indices ``0..warmup-1`` are warm-up.

    ``on_measured`` is called once, between the two, so telemetry can cover
    exactly the measured window.
    """
    run = _Run(send, scenario, on_record)
    if scenario.warmup > 0:
        await run.closed(0, scenario.warmup, max(1, min(scenario.concurrency, scenario.warmup)), True)
        await run.drain()
    if on_measured is not None:
        on_measured()
    parser = asyncio.create_task(run.parser())
    sampler = LagSampler()
    sampler.start()
    deadline = (
        asyncio.get_running_loop().call_later(scenario.duration_s, run.expire)
        if scenario.duration_s
        else None
    )
    try:
        if scenario.rate is None and scenario.turns > 1:
            await run.conversations(scenario.warmup, scenario.requests, scenario.turns, scenario.concurrency)
        elif scenario.rate is None:
            await run.closed(scenario.warmup, scenario.requests, max(1, scenario.concurrency), False)
        else:
            await run.opened(scenario.warmup)
    finally:
        if deadline is not None:
            deadline.cancel()
        lag = sampler.stop()
        run.queue.put_nowait(None)
        await parser
    stopped_early = run.stop and not run.expired and len(run.measured) < scenario.requests
    return LoadResult(records=tuple(run.records), loop_lag_ms=lag, stopped_early=stopped_early)

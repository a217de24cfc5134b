"""Live progress of one measured case: a line every few seconds, never a redraw.

``LiveProgress`` counts the measured requests as they end (``on_record``)
and, once started on the measurement's own event loop (``start``, from the
load generator's ``on_measured``), writes one line every ``interval_s``:
requests done of the total, how many are in flight, and the output tokens
per second of the requests that ended in the last interval. A case shorter
than one interval prints nothing. The line goes to the ``emit`` callable the
session hands down (nothing under ``-q``); lines, not a redraw, so CI logs
stay readable.

In flight is derived, not observed: a closed loop keeps ``concurrency``
requests in flight until the requests run out; an open loop has in flight
those due so far that have not ended, at most ``concurrency``. Its timer
runs on the measurement's loop, in the thread that stamps; one line every
few seconds costs far less than the loop-lag limit. This module must not
change what is measured.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

from pytest_llmperf.records import RequestRecord, Scenario

TTY_INTERVAL_S = 5.0
LOG_INTERVAL_S = 15.0
"""Without a terminal (a CI log) a line every 15 s: progress without flooding the log."""


def default_interval_s() -> float:
    stream = sys.__stdout__
    return TTY_INTERVAL_S if stream is not None and stream.isatty() else LOG_INTERVAL_S


class LiveProgress:
    """One case's progress lines; a no-op when ``emit`` is ``None``."""

    def __init__(
        self,
        emit: Callable[[str], None] | None,
        label: str,
        scenario: Scenario,
        interval_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._emit = emit
        self._label = label
        self._scenario = scenario
        self._interval_s = interval_s if interval_s is not None else default_interval_s()
        self._clock = clock
        self._started: float | None = None
        self._last = 0.0
        self._done = 0
        self._tokens = 0
        self._tokens_at_last = 0
        self._handle: asyncio.TimerHandle | None = None
        self._by_records = False

    def on_record(self, record: RequestRecord) -> None:
        if record.warmup:
            return
        self._done += 1
        if record.ok:
            self._tokens += record.output_tokens or 0
        if self._by_records and self._clock() - self._last >= self._interval_s:
            self.emit_line()

    def start(self) -> None:
        """Begin the measured phase.

        Inside the measurement's running loop a timer emits a line every interval, even while no
        request ends. Without one (client worker processes: the parent waits on their pipes, not
        on a loop) the records drive it: a record that arrives an interval after the last line
        emits the next.
        """
        if self._emit is None:
            return
        self._started = self._last = self._clock()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._by_records = True
            return
        self._arm(loop)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = loop.call_later(self._interval_s, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._arm(loop)
        self.emit_line()

    def in_flight(self, elapsed_s: float) -> int:
        sc = self._scenario
        left = max(sc.requests - self._done, 0)
        if sc.rate is None:
            return min(sc.concurrency, left)
        due = min(int(elapsed_s * sc.rate) + 1, sc.requests)
        return max(min(due - self._done, sc.concurrency, left), 0)

    def line(self) -> str:
        now = self._clock()
        elapsed = now - (self._started if self._started is not None else now)
        window = max(now - self._last, 1e-9)
        rate = (self._tokens - self._tokens_at_last) / window
        total = self._scenario.requests
        duration = self._scenario.duration_s
        done = (
            f"{self._done} of {total}"
            if duration is None
            else f"{self._done} (a {duration:g} s run, cap {total})"
        )
        return (
            f"{self._label}: {done} requests done, {self.in_flight(elapsed)} in flight, "
            f"{rate:.0f} output tok/s over the last {window:.0f} s, {elapsed:.0f} s in"
        )

    def emit_line(self) -> None:
        if self._emit is None:
            return
        text = self.line()
        self._last = self._clock()
        self._tokens_at_last = self._tokens
        self._emit(text)

    def stop(self) -> None:
        self._by_records = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

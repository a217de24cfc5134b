"""Endurance: thousands of streamed requests at concurrency 256 leave no sockets or memory behind.

The server is our detserver (``pytest_llmperf.testing.detserver``), a
deterministic instrument: every request is answered in full (4 tokens, 1 ms
apart), so any resource still held afterwards is the client's. The measuring
engine is driven the way the plugin drives it, through ``runner.measure``.

Bounds, and why:

* The starting level is taken after one warm-up run of the same shape. The
  first run in a process creates one-time resources that are not per-request:
  the event loop's signal self-pipe (2 fds, kept by uvloop for the process),
  the prompt word pool cache, interpreter caches and the allocator's arenas
  at their high-water mark for 256 streams (about 5 MiB of RSS).
* Open file descriptors: exactly the starting count. During the run at least
  200 more are open at once (one socket per stream), so one leaked socket per
  run, let alone per request, would show.
* Python objects (``sys.getallocatedblocks``, after ``gc.collect``): at most
  1,000 blocks more after 3,000 requests. A leak of one small object per
  request adds 3,000; warm caches settling add a few hundred at most
  (about 250 measured over four runs).
* RSS: at most 4 MiB more after 3,000 requests. Keeping each request's raw
  response bytes (1-2 KiB each, too big for the block count) would add 3-6
  MiB; about 0.3 MiB was measured over four runs.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import psutil

from pytest_llmperf.measure import runner
from pytest_llmperf.records import RequestRecord, Scenario
from pytest_llmperf.testing.harness import running_detserver

REQUESTS = 1000
CONCURRENCY = 256
RUNS = 3
MIB = 1 << 20


def level() -> tuple[int, int, int]:
    """Open fds, RSS bytes and live allocator blocks of this process, garbage collected first."""
    gc.collect()
    me = psutil.Process()
    return me.num_fds(), me.memory_info().rss, sys.getallocatedblocks()


def test_a_thousand_requests_at_concurrency_256_leave_fds_and_memory_where_they_were(tmp_path: Path) -> None:
    scenario = Scenario(
        input_tokens=16, output_tokens=4, concurrency=CONCURRENCY, requests=REQUESTS, warmup=0,
        timeout_s=60, min_requests=REQUESTS,
    )  # fmt: skip
    me = psutil.Process()
    peak_fds = 0

    def watch(record: RequestRecord) -> None:
        nonlocal peak_fds
        if int(record.request_id.rsplit("-", 1)[1]) % 50 == 0:  # a cheap look now and then
            peak_fds = max(peak_fds, me.num_fds())

    with running_detserver(tmp_path, ttft_ms=5, itl_ms=1) as server:
        target = server.target()
        warm = runner.measure(runner.Subject(target, model="det", backend="openai"), scenario)
        assert warm.summary.completed == REQUESTS
        del warm
        fds0, rss0, blocks0 = level()

        for _ in range(RUNS):
            result = runner.measure(
                runner.Subject(target, model="det", backend="openai"), scenario, on_record=watch
            )
            assert (result.summary.completed, result.summary.errors) == (REQUESTS, 0)
            assert all(r.output_tokens == 4 for r in result.records)
            del result
        fds1, rss1, blocks1 = level()

    assert peak_fds >= fds0 + 200, "the streams were not concurrent, so fds cannot show a leak"
    assert fds1 == fds0
    assert blocks1 - blocks0 <= 1000, f"{blocks1 - blocks0} more live blocks after {RUNS * REQUESTS} requests"
    assert rss1 - rss0 <= 4 * MIB, f"RSS grew {(rss1 - rss0) / MIB:.1f} MiB after {RUNS * REQUESTS} requests"

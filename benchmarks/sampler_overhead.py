"""What does the telemetry sampler cost? Its own CPU at 10 Hz, and what it does to an event loop.

Runs the sampler for ``--seconds`` in each configuration below while this
process's main thread runs an asyncio loop that sleeps 1 ms at a time and
records how late each wake-up is (the sampler thread shares the GIL with
the loop, so its reads can delay the loop's timestamps). Prints, per
configuration: samples taken, the sampler thread's CPU (``time.thread_time``
inside the thread, as ``sampler_cpu_ms_per_s`` reports it), that as a share
of one core and per sample, and the loop's wake-up lateness p50 / p99 / max.

Configurations: no sampler (the loop's own noise); host only (per-core CPU,
memory); plus a server process tree; plus a ``/metrics`` URL polled at the
default 1 Hz; and polled at 10 Hz (the worst case). The "server" is
``python -m http.server`` on 127.0.0.1 serving a real 609-line vLLM page
from ``tests/data/telemetry``, so the scrape has vLLM's size. No GPU is
read (none here); NVML reads add their own cost on a GPU machine.

    .venv/bin/python benchmarks/sampler_overhead.py              # about a minute
    .venv/bin/python benchmarks/sampler_overhead.py --seconds 5

This script only measures and prints; it stops the one server it started.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from pytest_llmperf.telemetry import Sampler, SamplerConfig, SamplerSources

PAGE = Path(__file__).resolve().parent.parent / "tests" / "data" / "telemetry" / "vllm_metrics_after.prom"


async def loop_lateness(seconds: float) -> list[float]:
    """How late (ms) each 1 ms sleep wakes up, for ``seconds``."""
    late: list[float] = []
    end = time.perf_counter() + seconds
    while (now := time.perf_counter()) < end:
        await asyncio.sleep(0.001)
        late.append((time.perf_counter() - now - 0.001) * 1000.0)
    return late


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_metrics_server(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    shutil.copy(PAGE, folder / "metrics")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    deadline = time.monotonic() + 30
    while True:  # wait for the port: this is start-up, not a measurement
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                response.read()
            return proc, url
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per configuration (default 10)")
    parser.add_argument("--interval", type=float, default=0.1, help="sampler interval (default 0.1 = 10 Hz)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        server, url = start_metrics_server(Path(tmp))
        try:
            every = args.interval
            pid = server.pid
            no_gpu = SamplerSources(gpu=None)
            configs: list[tuple[str, Callable[[], Sampler] | None]] = [
                ("no sampler (loop noise)", None),
                ("host only", lambda: Sampler(SamplerConfig(interval_s=every), no_gpu)),
                (
                    "host + server tree",
                    lambda: Sampler(SamplerConfig(interval_s=every, server_pid=pid), no_gpu),
                ),
                (
                    "host + tree + /metrics at 1 Hz",
                    lambda: Sampler(SamplerConfig(interval_s=every, server_pid=pid, metrics_url=url), no_gpu),
                ),
                (
                    "host + tree + /metrics at 10 Hz",
                    lambda: Sampler(
                        SamplerConfig(
                            interval_s=every, server_pid=pid, metrics_url=url, metrics_interval_s=every
                        ),
                        no_gpu,
                    ),
                ),
            ]
            print(f"{args.seconds:g} s per configuration, interval {args.interval:g} s, no GPU read")
            header = (
                f"{'configuration':34} {'samples':>7} {'CPU ms/s':>9} {'% core':>7} "
                f"{'ms/sample':>9} {'lag p50':>8} {'lag p99':>8} {'lag max':>8}"
            )
            print(header)
            for name, make in configs:
                if make is None:
                    late = asyncio.run(loop_lateness(args.seconds))
                    cells = f"{'-':>7} {'-':>9} {'-':>7} {'-':>9}"
                else:
                    with make() as sampler:
                        late = asyncio.run(loop_lateness(args.seconds))
                    summary = sampler.summary()
                    cost = summary["sampler_cpu_ms_per_s"]
                    per_sample = cost * summary["duration_s"] / max(summary["samples"], 1)
                    cells = f"{summary['samples']:>7} {cost:>9.2f} {cost / 10:>6.2f}% {per_sample:>9.3f}"
                    for warning in sampler.warnings:
                        print(f"  warning: {warning}")
                print(
                    f"{name:34} {cells} {statistics.median(late):>8.3f} "
                    f"{pct(late, 0.99):>8.3f} {max(late):>8.3f}"
                )
        finally:
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    main()

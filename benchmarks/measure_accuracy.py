"""How accurate and how cheap is our client? Measured against known truth.

Starts the deterministic server (a separate process that logs, per request
id, the ``perf_counter_ns`` of its first token write and of every later
write), drives our client at several concurrencies and ITLs with 128-token
prompts and exactly 64 output tokens, joins client and server stamps by
request id, and prints per case:

* TTFT error: client first-token stamp minus the server's first write
  (p50, p99); both are CLOCK_MONOTONIC, so they compare across processes;
* ITL error: client gap minus server gap for the same token (|error| p50, p99);
* delivered output tok/s, and the ideal a closed loop could get;
* client CPU (``time.process_time`` of this process) per 1,000 tokens, over
  the load only (prompt building excluded);
* event-loop lag p99, errors and whether the run counted as invalid.

Run: ``.venv/bin/python benchmarks/measure_accuracy.py`` (about a minute and a half;
``--quick`` for a smaller run). ``--pin`` puts the server on the last CPU
and the client on the first; it helps on an idle machine and hurts when
other work shares a pinned core, so it is off by default.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from pytest_llmperf.measure import runner
from pytest_llmperf.measure.stats import percentile, summarize
from pytest_llmperf.records import RequestRecord, Scenario
from pytest_llmperf.testing.harness import DetServer, running_detserver

TTFT_MS = 63.5
INPUT_TOKENS = 128
OUTPUT_TOKENS = 64


def _pct(values: list[float], q: float) -> float:
    return percentile(sorted(values), q) if values else float("nan")


def errors_against_server(
    records: tuple[RequestRecord, ...], server: DetServer
) -> tuple[list[float], list[float]]:
    """TTFT errors and per-token ITL errors in ms, joined by request id."""
    stamps = server.stamps()
    ttft: list[float] = []
    itl: list[float] = []
    for r in records:
        s = stamps.get(r.request_id)
        if not r.ok or s is None or not s.get("first_ns"):
            continue
        ttft.append((r.chunk_ns[0] - s["first_ns"]) / 1e6)
        server_ns = s.get("token_ns") or []
        if len(server_ns) == len(r.chunk_ns):
            for i in range(1, len(server_ns)):
                client_gap = r.chunk_ns[i] - r.chunk_ns[i - 1]
                server_gap = server_ns[i] - server_ns[i - 1]
                itl.append(abs(client_gap - server_gap) / 1e6)
    return ttft, itl


def run_case(server: DetServer, itl_ms: float, concurrency: int, requests: int) -> dict[str, float | str]:
    scenario = Scenario(
        input_tokens=INPUT_TOKENS,
        output_tokens=OUTPUT_TOKENS,
        concurrency=concurrency,
        requests=requests,
        warmup=0,
        timeout_s=60.0,
    )
    prepared, _ = runner.prepare_requests(server.target("completions"), scenario)
    cpu0 = time.process_time()
    load = runner.run_prepared(prepared, scenario)
    cpu_s = time.process_time() - cpu0
    summary = summarize(load.records, scenario)
    tokens = sum(r.output_tokens or 0 for r in load.records)
    ttft, itl = errors_against_server(load.records, server)
    lag = load.loop_lag_ms
    invalid = runner.invalid_reasons(summary, load.records, scenario, lag.p99 if lag else None)
    ideal = concurrency * OUTPUT_TOKENS / ((TTFT_MS + (OUTPUT_TOKENS - 1) * itl_ms) / 1000.0)
    return {
        "itl": itl_ms,
        "c": concurrency,
        "n": requests,
        "ttft_p50": _pct(ttft, 50),
        "ttft_p99": _pct(ttft, 99),
        "itl_p50": _pct(itl, 50),
        "itl_p99": _pct(itl, 99),
        "tok_s": summary.output_tok_per_s or 0.0,
        "ideal": ideal,
        "cpu": cpu_s * 1000.0 / tokens * 1000.0 if tokens else float("nan"),
        "lag_p99": lag.p99 if lag else float("nan"),
        "errors": summary.errors,
        "valid": "no" if invalid else "yes",
    }


HEADER = (
    f"{'ITL ms':>6} {'conc':>5} {'reqs':>5} | {'TTFT err p50':>12} {'p99':>7} | {'ITL err p50':>11} "
    f"{'p99':>6} | {'tok/s':>7} {'ideal':>7} | {'CPU ms/1k tok':>13} | {'lag p99':>7} {'errs':>4} "
    f"{'valid':>5}"
)


def row(r: dict[str, float | str]) -> str:
    return (
        f"{r['itl']:>6g} {r['c']:>5} {r['n']:>5} | {r['ttft_p50']:>9.3f} ms {r['ttft_p99']:>7.3f} | "
        f"{r['itl_p50']:>8.3f} ms {r['itl_p99']:>6.3f} | {r['tok_s']:>7.0f} {r['ideal']:>7.0f} | "
        f"{r['cpu']:>13.1f} | {r['lag_p99']:>7.2f} {r['errors']:>4} {r['valid']:>5}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests per case")
    parser.add_argument(
        "--pin", action="store_true", help="pin the server to the last CPU, the client to the first"
    )
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 16, 64, 256])
    parser.add_argument("--itl-ms", type=float, nargs="*", default=[10.0, 1.0])
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    pin = args.pin and len(cpus) >= 2
    rounds = 2 if args.quick else 8
    pinned = f"server CPU {cpus[-1]}, client CPU {cpus[0]}" if pin else "no"
    print(
        f"pytest-llmperf client accuracy: {INPUT_TOKENS}-token prompts, {OUTPUT_TOKENS} output tokens, "
        f"TTFT {TTFT_MS} ms; {len(cpus)} CPUs, load average {os.getloadavg()[0]:.2f}; pinned: {pinned}"
    )
    print(HEADER)
    with tempfile.TemporaryDirectory(prefix="llmperf-bench-") as tmp:
        for itl_ms in args.itl_ms:
            with running_detserver(
                Path(tmp), ttft_ms=TTFT_MS, itl_ms=itl_ms, args=["--stamp-tokens"], name=f"itl{itl_ms:g}"
            ) as server:
                if pin:
                    os.sched_setaffinity(server.process.pid, {cpus[-1]})
                    os.sched_setaffinity(0, {cpus[0]})
                try:
                    for c in args.concurrency:
                        n = max(8, c * rounds) if c > 1 else (6 if args.quick else 30)
                        print(row(run_case(server, itl_ms, c, n)), flush=True)
                finally:
                    if pin:
                        os.sched_setaffinity(0, set(cpus))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

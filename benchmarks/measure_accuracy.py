"""How accurate and how cheap is our client? Measured against known truth.

Starts the deterministic server (a separate process that logs, per request
id, the ``perf_counter_ns`` when the request arrived, when it wrote the first
token and every later one), drives our client at several concurrencies, ITLs
and client worker counts with 128-token prompts and exactly 64 output
tokens, joins client and server stamps by request id, and prints per case:

* TTFT error, end to end: the client's TTFT minus the server's own
  receive-to-first-write time (p50, p99), so the send leg counts too;
* the delivery leg alone: the client's first-token stamp minus the server's
  first write (p50, p99); both are CLOCK_MONOTONIC, so they compare across
  processes;
* ITL error: client gap minus server gap for the same token (|error| p50, p99);
* delivered output tok/s, and the ideal a closed loop could get;
* client CPU per 1,000 tokens: the CPU time of every client process and
  thread (the event loops, the parser, the worker processes, the telemetry
  sampler as a test runs it) over the measured phase;
* event-loop lag p99 over every worker, errors, and whether the run counted
  as invalid.

Run: ``.venv/bin/python benchmarks/measure_accuracy.py`` (about three minutes;
``--quick`` for a smaller run). Acceptance figures, one command each:

* 2 workers vs 1 at 256 streams, ITL 1 ms:
  ``measure_accuracy.py --itl-ms 1 --concurrency 256 --workers 1 2``
* client CPU at 1 stream against 16 streams:
  ``measure_accuracy.py --itl-ms 10 --concurrency 1 16``; the same figure for
  the 0.1 client: ``PYTHONPATH=<a checkout of 0.1> python benchmarks/measure_accuracy.py
  --itl-ms 10 --concurrency 1 16`` (this script feature-detects the older API).

``--telemetry-interval 0`` leaves the telemetry sampler out (its fixed cost,
about 1% of a core at 10 Hz, dominates CPU per token at low token rates);
``--pin`` puts the server on the first CPU and the client on the others, as
the plugin does for servers it starts on this host's CPUs.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_llmperf.measure import runner
from pytest_llmperf.measure.stats import percentile, summarize
from pytest_llmperf.records import RequestRecord, Scenario
from pytest_llmperf.testing.harness import DetServer, running_detserver

TTFT_MS = 63.5
INPUT_TOKENS = 128
OUTPUT_TOKENS = 64


def _pct(values: list[float], q: float) -> float:
    return percentile(sorted(values), q) if values else float("nan")


@dataclass(frozen=True)
class Errors:
    """Client stamps against the server's, in ms, joined by request id."""

    ttft: list[float]
    delivery: list[float]
    itl: list[float]
    send: list[float] = field(default_factory=list)
    """The send leg: the server's receive stamp minus the client's send stamp."""


def server_entries(stamp_log: Path) -> list[dict[str, Any]]:
    """Every entry of a detserver stamp log, in order."""
    if not stamp_log.exists():
        return []
    return [json.loads(line) for line in stamp_log.read_text().splitlines() if line.strip()]


def errors_against_server(records: tuple[RequestRecord, ...], server: DetServer) -> Errors:
    stamps = server.stamps()
    out = Errors([], [], [])
    for r in records:
        s = stamps.get(r.request_id)
        if not r.ok or s is None or not s.get("first_ns") or r.warmup:
            continue
        server_ttft = s["first_ns"] - s["recv_ns"]
        out.ttft.append((r.chunk_ns[0] - r.sent_ns - server_ttft) / 1e6)
        out.delivery.append((r.chunk_ns[0] - s["first_ns"]) / 1e6)
        out.send.append((s["recv_ns"] - r.sent_ns) / 1e6)
        server_ns = s.get("token_ns") or []
        if len(server_ns) == len(r.chunk_ns):
            for i in range(1, len(server_ns)):
                client_gap = r.chunk_ns[i] - r.chunk_ns[i - 1]
                server_gap = server_ns[i] - server_ns[i - 1]
                out.itl.append(abs(client_gap - server_gap) / 1e6)
    return out


def _supports(function: Any, parameter: str) -> bool:
    return parameter in inspect.signature(function).parameters


def run_case(
    server: DetServer,
    itl_ms: float,
    concurrency: int,
    requests: int,
    *,
    workers: int = 1,
    telemetry_interval_s: float = 0.1,
    client_cores: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """One measured case, as a test runs it (telemetry on at its default unless told otherwise)."""
    scenario = Scenario(
        input_tokens=INPUT_TOKENS,
        output_tokens=OUTPUT_TOKENS,
        concurrency=concurrency,
        requests=requests,
        warmup=min(concurrency, 4),
        timeout_s=60.0,
    )
    prepared, _ = runner.prepare_requests(server.target("completions"), scenario)
    sampler = _sampler(server, telemetry_interval_s)
    window: dict[str, float] = {}

    def on_measured() -> None:
        if sampler is not None:
            sampler.start()
        window["cpu"] = time.process_time()

    kwargs: dict[str, Any] = {"on_measured": on_measured}
    if _supports(runner.run_prepared, "settings"):
        kwargs["settings"] = runner.ClientSettings(workers=workers, cores=client_cores)
    elif workers > 1:
        raise SystemExit("this version of pytest-llmperf has no client workers: use --workers 1")
    try:
        load = runner.run_prepared(prepared, scenario, **kwargs)
    finally:
        if sampler is not None and sampler.started:
            sampler.stop()
    report = getattr(load, "client", None)
    cpu_s = report.cpu_s if report is not None else time.process_time() - window["cpu"]
    measured = tuple(r for r in load.records if not r.warmup)
    summary = summarize(load.records, scenario)
    tokens = sum(r.output_tokens or 0 for r in measured if r.ok)
    errs = errors_against_server(load.records, server)
    lag = load.loop_lag_ms
    invalid = runner.invalid_reasons(summary, scenario, load)
    ideal = concurrency * OUTPUT_TOKENS / ((TTFT_MS + (OUTPUT_TOKENS - 1) * itl_ms) / 1000.0)
    return {
        "itl": itl_ms,
        "c": concurrency,
        "w": report.workers if report is not None else 1,
        "n": requests,
        "ttft_p50": _pct(errs.ttft, 50),
        "ttft_p99": _pct(errs.ttft, 99),
        "deliv_p50": _pct(errs.delivery, 50),
        "deliv_p99": _pct(errs.delivery, 99),
        "itl_p50": _pct(errs.itl, 50),
        "itl_p99": _pct(errs.itl, 99),
        "tok_s": summary.output_tok_per_s or 0.0,
        "ideal": ideal,
        "cpu": cpu_s * 1e6 / tokens if tokens and cpu_s is not None else float("nan"),
        "lag_p99": lag.p99 if lag else float("nan"),
        "errors": summary.errors,
        "valid": "no" if invalid else "yes",
        "raw": errs,
    }


def _sampler(server: DetServer, interval_s: float) -> Any:
    """The telemetry sampler a test would run, counting client worker processes as the client."""
    if interval_s <= 0:
        return None
    from pytest_llmperf import telemetry

    config: dict[str, Any] = {"interval_s": interval_s, "server_pid": server.process.pid}
    sources: dict[str, Any] = {}
    try:
        from pytest_llmperf.measure import workers

        try:
            cpuload = importlib.import_module("pytest_llmperf.telemetry.cpuload")
        except ImportError:  # before telemetry.load was renamed telemetry.cpuload
            cpuload = importlib.import_module("pytest_llmperf.telemetry.load")
        reader = cpuload.PsutilClientReader
        if _supports(reader, "extra_pids"):
            sources["client_reader"] = lambda: reader(extra_pids=workers.client_pids)
    except ImportError:  # an older version: this process is the whole client
        pass
    if hasattr(telemetry, "SamplerConfig"):
        return telemetry.Sampler(telemetry.SamplerConfig(**config), telemetry.SamplerSources(**sources))
    return telemetry.Sampler(**config, **sources)  # before SamplerConfig and SamplerSources


HEADER = (
    f"{'ITL ms':>6} {'conc':>5} {'wkrs':>4} {'reqs':>5} | {'TTFT err p50':>12} {'p99':>7} | "
    f"{'deliv p50':>9} {'p99':>6} | {'ITL err p50':>11} {'p99':>6} | {'tok/s':>7} {'ideal':>7} | "
    f"{'CPU ms/1k tok':>13} | {'lag p99':>7} {'errs':>4} {'valid':>5}"
)


def row(r: dict[str, Any]) -> str:
    return (
        f"{r['itl']:>6g} {r['c']:>5} {r['w']:>4} {r['n']:>5} | "
        f"{r['ttft_p50']:>9.3f} ms {r['ttft_p99']:>7.3f} | "
        f"{r['deliv_p50']:>9.3f} {r['deliv_p99']:>6.3f} | {r['itl_p50']:>8.3f} ms {r['itl_p99']:>6.3f} | "
        f"{r['tok_s']:>7.0f} {r['ideal']:>7.0f} | {r['cpu']:>13.1f} | {r['lag_p99']:>7.2f} {r['errors']:>4} "
        f"{r['valid']:>5}"
    )


def requests_for(concurrency: int, quick: bool) -> int:
    rounds = 2 if quick else 8
    return max(8, concurrency * rounds) if concurrency > 1 else (6 if quick else 30)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests per case")
    parser.add_argument(
        "--pin", action="store_true", help="server on the first CPU, the client on the others"
    )
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 16, 64, 256])
    parser.add_argument("--itl-ms", type=float, nargs="*", default=[10.0, 1.0])
    parser.add_argument("--workers", type=int, nargs="*", default=[1], help="client worker counts to compare")
    parser.add_argument(
        "--telemetry-interval", type=float, default=0.1, help="the sampler's period (0: no telemetry)"
    )
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    pin = args.pin and len(cpus) >= 2
    client_cores = tuple(cpus[1:]) if pin else None
    pinned = f"server CPU {cpus[0]}, client CPUs {list(cpus[1:])}" if pin else "no"
    telemetry = f"{args.telemetry_interval:g} s" if args.telemetry_interval > 0 else "off"
    print(
        f"pytest-llmperf client accuracy: {INPUT_TOKENS}-token prompts, {OUTPUT_TOKENS} output tokens, "
        f"TTFT {TTFT_MS} ms; {len(cpus)} CPUs, load average {os.getloadavg()[0]:.2f}; pinned: {pinned}; "
        f"telemetry: {telemetry}"
    )
    print(HEADER)
    with tempfile.TemporaryDirectory(prefix="llmperf-bench-") as tmp:
        for itl_ms in args.itl_ms:
            with running_detserver(
                Path(tmp) / f"itl{itl_ms:g}", ttft_ms=TTFT_MS, itl_ms=itl_ms, args=["--stamp-tokens"]
            ) as server:
                if pin:
                    os.sched_setaffinity(server.process.pid, {cpus[0]})
                for c in args.concurrency:
                    for w in args.workers:
                        n = requests_for(c, args.quick)
                        case = run_case(
                            server,
                            itl_ms,
                            c,
                            n,
                            workers=w,
                            telemetry_interval_s=args.telemetry_interval,
                            client_cores=client_cores,
                        )
                        print(row(case), flush=True)
    _close_workers()
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


def _close_workers() -> None:
    try:
        from pytest_llmperf.measure import workers
    except ImportError:
        return
    workers.close_pool()


if __name__ == "__main__":
    sys.exit(main())

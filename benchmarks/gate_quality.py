"""Gate quality: how often the regression gate fires on jitter, and how often on a real slowdown.

Starts two deterministic-latency servers, one as is and one with every ITL
multiplied by ``--slowdown`` (default 1.10: a 10% TPOT regression), then runs
``--trials`` independent trials. Each trial measures a fresh baseline on the
unchanged server, saves it the way the plugin does (``benchjson.llm_info``
through JSON), and judges two candidates against it with the default gate
settings: a rerun on the unchanged server (any failure is a false failure)
and a run on the slowed server (a ``fail-regression`` is a catch). Servers
add Gaussian jitter (``--jitter-ms``) to TTFT and every ITL, with fresh
draws for every request, and the machine adds its own scheduling noise.

    .venv/bin/python benchmarks/gate_quality.py            # 20 + 20 trials, about 4 minutes
    .venv/bin/python benchmarks/gate_quality.py --trials 5 --jitter-ms 4

Target (issue 5): at most 1 false failure in 20, at least 19 of 20 caught.
This script only measures and prints; it changes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pytest_llmperf.judge.verdict import judge
from pytest_llmperf.measure import runner
from pytest_llmperf.output import benchjson
from pytest_llmperf.records import Outcome, RunResult, Scenario
from pytest_llmperf.testing.harness import DetServer, running_detserver


def saved(result: RunResult) -> dict[str, Any]:
    """The baseline entry's ``extra_info["llm"]`` exactly as a saved JSON file returns it."""
    loaded: dict[str, Any] = json.loads(json.dumps(benchjson.llm_info(result, None)))
    return loaded


def measure(server: DetServer, scenario: Scenario) -> RunResult:
    return runner.measure(server.target(), scenario, model="detserver", backend="openai")


def tpot_change(outcome: Outcome) -> str:
    found = [c for c in outcome.comparisons if c.metric == "tpot_ms"]
    return f"{found[0].change:+6.1%}" if found else "   n/a"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--input-tokens", type=int, default=128)
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--ttft-ms", type=float, default=50.0)
    p.add_argument("--itl-ms", type=float, default=10.0)
    p.add_argument("--jitter-ms", type=float, default=2.0, help="stddev of the noise on TTFT and each ITL")
    p.add_argument("--slowdown", type=float, default=1.10, help="ITL multiplier of the slowed server")
    args = p.parse_args(argv)

    scenario = Scenario(
        input_tokens=args.input_tokens,
        output_tokens=args.output_tokens,
        concurrency=args.concurrency,
        requests=args.requests,
        warmup=min(args.concurrency, 2),
    )
    print(
        f"gate quality: {args.trials} trials of {scenario.name}, {args.requests} requests; server TTFT "
        f"{args.ttft_ms} ms, ITL {args.itl_ms} ms, jitter {args.jitter_ms} ms; slowed ITL x{args.slowdown}",
        flush=True,
    )
    noise = ["--jitter-ms", str(args.jitter_ms)]
    false_failures, caught = 0, 0
    fired: Counter[str] = Counter()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llmperf-gate-") as tmp:
        work = Path(tmp)
        with (
            running_detserver(
                work, ttft_ms=args.ttft_ms, itl_ms=args.itl_ms, name="same", args=[*noise, "--seed", "1"]
            ) as same,
            running_detserver(
                work,
                ttft_ms=args.ttft_ms,
                itl_ms=args.itl_ms,
                name="slow",
                args=[*noise, "--seed", "2", "--itl-scale", str(args.slowdown)],
            ) as slow,
        ):
            print(" trial  rerun (TPOT change)           slowed (TPOT change)", flush=True)
            for trial in range(1, args.trials + 1):
                base = saved(measure(same, scenario))
                rerun = judge(measure(same, scenario), None, base)
                slowed = judge(measure(slow, scenario), None, base)
                false_failures += rerun.kind != "pass"
                caught += slowed.kind == "fail-regression"
                fired.update(c.metric for c in slowed.comparisons if c.regressed)
                print(
                    f" {trial:5d}  {rerun.kind:15s} {tpot_change(rerun)}       "
                    f"{slowed.kind:15s} {tpot_change(slowed)}",
                    flush=True,
                )
                for reason in rerun.reasons:
                    print(f"        false failure: {reason}", flush=True)
    minutes = (time.perf_counter() - started) / 60
    print(f"false failures (unchanged server): {false_failures} of {args.trials}")
    print(f"caught (ITL x{args.slowdown}):          {caught} of {args.trials}")
    print("metrics that fired on the slowed server: " + ", ".join(f"{m} {n}" for m, n in fired.most_common()))
    print(f"took {minutes:.1f} min")
    ok = false_failures <= args.trials // 20 and caught >= args.trials - args.trials // 20
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

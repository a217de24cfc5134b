"""Gate quality: false alarms, caught slowdowns and busy machines, over whole pytest sessions.

Runs the example suite (``examples/``) as CI would, one pytest session after
another, each with ``--benchmark-autosave --benchmark-compare`` against a
rolling history of the passing runs before it, and prints every figure the
gate's acceptance is judged by:

* ``det``: the deterministic server (TTFT 20 ms, ITL 2 ms, jitter 0.2 ms),
  ``--seed`` unchanged sessions to start the history, then ``--sessions``
  unchanged sessions and as many with every ITL x``--itl-scale`` (1.1: a
  10% slower decode), alternating. Acceptance: at most 1 unchanged session
  of 20 fails anywhere; at least 19 of 20 slowed sessions are caught.
* ``llama``: the embedded default (llama-server, Gemma 3 270M), the same
  schedule; the slowdown is a CPU quota on the server's own process
  (``gate_levers``; ``--slowdown 0.8`` gives it 80% of the machine), whose
  measured effect is printed. Repeat with other ``--slowdown`` values to find
  the smallest slowdown caught in 19 of 20 sessions.
* ``busy``: sessions with ``--hogs`` busy-loop processes beside llama-server,
  against the llama history: every case must be *invalid* with the busy
  figure, none a regression and none a pass.

Also printed: how far each case's run figures moved between unchanged
sessions (max/min, what ``noise.ONE_RUN_FLOOR`` must exceed) and the CPU
figures of quiet and hog sessions (what ``busy.OTHERS_BUSY_CORES`` sits
between). It prints figures and changes nothing; it is not a test.

    .venv/bin/python benchmarks/gate_quality.py --part det                  # ~10 min on an idle machine
    .venv/bin/python benchmarks/gate_quality.py --part llama,busy           # ~2 h (2.5 min a session)
    .venv/bin/python benchmarks/gate_quality.py --part llama --sessions 5 --seed 3 --slowdown 0.7
    .venv/bin/python benchmarks/gate_quality.py --part det --repeat 3 -k "c1 or 64"
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

from gate_levers import Hog, Lever, make_lever, watch_for_server

from pytest_llmperf.testing.harness import running_detserver

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")


@dataclass
class Session:
    """One pytest session: how it ended, and each case's saved entries (one per repeat)."""

    kind: str
    exit_code: int
    minutes: float
    cases: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    passed: bool = False

    def outcomes(self) -> Counter[str]:
        return Counter(e["outcome"] for entries in self.cases.values() for e in entries)

    def failed_anywhere(self) -> bool:
        return any(kind.startswith("fail") for kind in self.outcomes()) or self.exit_code not in (0, 1)

    def regressed(self) -> list[str]:
        return [case for case, es in self.cases.items() if any(e["outcome"] == "fail-regression" for e in es)]

    def figure(self, case: str, metric: str) -> float | None:
        values = [v for e in self.cases.get(case, []) for v in e["samples"].get(metric, ()) if v > 0]
        return median(values) if values else None

    def load(self, key: str) -> list[float]:
        return [
            e["telemetry"]["load"][key]
            for entries in self.cases.values()
            for e in entries
            if key in (e.get("telemetry") or {}).get("load", {})
        ]


class Runner:
    """Runs sessions of the suite in ``work``, all saving into one storage."""

    def __init__(self, work: Path, extra: Sequence[str], repeat: int, select: str | None) -> None:
        self.work = work
        self.store = work / "store"
        self.suite = work / "suite"
        self.suite.mkdir(parents=True, exist_ok=True)
        for example in (ROOT / "examples").glob("test_*.py"):
            shutil.copy(example, self.suite / example.name)
        (self.suite / "pytest.ini").write_text("[pytest]\n")
        self.extra = list(extra)
        self.repeat = repeat
        self.select = select

    def saved(self) -> list[Path]:
        return sorted(self.store.glob("*/[0-9][0-9][0-9][0-9]_*.json"))

    def session(
        self, kind: str, *, extra: Sequence[str] = (), lever: Lever | None = None, hogs: int = 0
    ) -> Session:
        before = set(self.saved())
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(self.suite),
                f"--benchmark-storage=file://{self.store}", "--benchmark-autosave",
                f"--llm-repeat={self.repeat}",
                *self.extra, *extra]  # fmt: skip
        if before:
            argv.append("--benchmark-compare")
        if self.select:
            argv += ["-k", self.select]
        started = time.monotonic()
        with Hog(hogs) if hogs else contextlib.nullcontext():
            proc = subprocess.Popen(argv, cwd=self.suite, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            watcher = watch_for_server(proc, lever) if lever is not None else None
            output, _ = proc.communicate()
            if watcher is not None:
                watcher.join()
                assert lever is not None
                lever.release()
        minutes = (time.monotonic() - started) / 60
        new = [p for p in self.saved() if p not in before]
        session = Session(kind, proc.returncode, minutes)
        if not new:
            print(output.decode(errors="replace")[-3000:], flush=True)
            return session
        document = json.loads(new[-1].read_text("utf-8"))
        session.passed = bool((document.get("llmperf") or {}).get("passed"))
        for bench in document["benchmarks"]:
            llm = (bench.get("extra_info") or {}).get("llm")
            if llm is not None:
                session.cases.setdefault(llm.get("case") or bench["fullname"], []).append(llm)
        return session


def line(session: Session, index: int) -> str:
    counts = ", ".join(f"{n} {kind}" for kind, n in sorted(session.outcomes().items()))
    return f" {index:3d} {session.kind:9s} {session.minutes:5.1f} min  {counts}"


def show_failures(session: Session) -> None:
    for case, entries in session.cases.items():
        for e in entries:
            if e["outcome"] != "pass":
                print(f"        {case}: {e['outcome']}: {(e.get('reasons') or [''])[0]}", flush=True)


def schedule(
    runner: Runner, seed: int, sessions: int, same: dict[str, Any], slowed: dict[str, Any]
) -> list[Session]:
    """``seed`` unchanged sessions, then unchanged and slowed sessions alternating (drift hits both)."""
    done: list[Session] = []
    plan = ["seed"] * seed + [kind for _ in range(sessions) for kind in ("unchanged", "slowed")]
    for index, kind in enumerate(plan, start=1):
        session = runner.session(kind, **(slowed if kind == "slowed" else same))
        done.append(session)
        print(line(session, index), flush=True)
        if kind == "unchanged":
            show_failures(session)
    return done


def spread_report(sessions: list[Session]) -> None:
    """How far each case's run figures moved between unchanged sessions (max/min)."""
    quiet = [s for s in sessions if s.kind in ("seed", "unchanged") and s.passed]
    if len(quiet) < 2:
        return
    print(f"  run-to-run spread over {len(quiet)} passing unchanged sessions (max/min of the case's median):")
    cases = sorted({c for s in quiet for c in s.cases})
    for metric in METRICS:
        ratios = []
        for case in cases:
            figures = [f for s in quiet if (f := s.figure(case, metric)) is not None]
            if len(figures) >= 2:
                ratios.append(max(figures) / min(figures))
        if ratios:
            print(
                f"    {metric:8s} median {median(ratios):.3f}x, worst {max(ratios):.3f}x "
                f"over {len(ratios)} cases"
            )


def slowdown_report(sessions: list[Session]) -> None:
    quiet = [s for s in sessions if s.kind in ("seed", "unchanged") and s.passed]
    slow = [s for s in sessions if s.kind == "slowed"]
    ratios = []
    for case in sorted({c for s in slow for c in s.cases}):
        before = [f for s in quiet if (f := s.figure(case, "tpot_ms")) is not None]
        after = [f for s in slow if (f := s.figure(case, "tpot_ms")) is not None]
        if before and after:
            ratios.append(median(after) / median(before))
    if ratios:
        print(f"  measured slowdown (median slowed / median unchanged TPOT, per case): "
              f"median {median(ratios):.3f}x, "
              f"range {min(ratios):.3f}-{max(ratios):.3f}x")  # fmt: skip


def verdicts(name: str, sessions: list[Session]) -> None:
    unchanged = [s for s in sessions if s.kind == "unchanged"]
    slowed = [s for s in sessions if s.kind == "slowed"]
    false_alarms = sum(s.failed_anywhere() for s in unchanged)
    invalid = sum(1 for s in unchanged if s.outcomes().get("invalid"))
    caught = sum(bool(s.regressed()) for s in slowed)
    per_case = [len(s.regressed()) / max(len(s.cases), 1) for s in slowed]
    minutes = median([s.minutes for s in sessions]) if sessions else math.nan
    print(f"{name}: session length {minutes:.1f} min (median)")
    print(f"  unchanged sessions that failed anywhere: {false_alarms} of {len(unchanged)}"
          f" (and {invalid} with an invalid case: a busy machine is not a verdict)")  # fmt: skip
    print(f"  slowed sessions caught (a fail-regression anywhere): {caught} of {len(slowed)}; "
          f"cases caught per session: median {median(per_case) if per_case else math.nan:.0%}")  # fmt: skip
    regressions = [
        e for s in slowed for es in s.cases.values() for e in es if e["outcome"] == "fail-regression"
    ]
    fired = Counter(r.split(" ")[0] for e in regressions for r in e.get("reasons", ()))
    print("  metrics that fired on slowed sessions: " + ", ".join(f"{m} {n}" for m, n in fired.most_common()))
    slowdown_report(sessions)
    spread_report(sessions)
    others = [v for s in sessions if s.kind != "busy" for v in s.load("others_cores_mean")]
    if others:
        print(
            f"  CPU of other processes in quiet sessions: max {max(others):.3f} cores, "
            f"median {median(others):.3f}"
        )


def busy_report(sessions: list[Session]) -> None:
    busy = [s for s in sessions if s.kind == "busy"]
    if not busy:
        return
    entries = [e for s in busy for es in s.cases.values() for e in es]
    named = sum(
        1 for e in entries if e["outcome"] == "invalid" and any("machine busy" in r for r in e["reasons"])
    )
    kinds = Counter(e["outcome"] for e in entries)
    others = [v for s in busy for v in s.load("others_cores_mean")]
    idle = [v for s in busy for v in s.load("idle_cores_mean")]
    print(f"busy: {len(busy)} sessions with a CPU hog, {len(entries)} measured cases")
    print(f"  invalid naming the busy figure: {named}; fail-regression: {kinds.get('fail-regression', 0)}; "
          f"pass: {kinds.get('pass', 0)}; other: {dict(kinds)}")  # fmt: skip
    if others:
        print(f"  CPU of other processes with the hog: min {min(others):.3f} cores, "
              f"median {median(others):.3f}; "
              f"idle cores max {max(idle):.3f}")  # fmt: skip


@contextlib.contextmanager
def det_servers(work: Path, itl_scale: float) -> Iterator[tuple[str, str]]:
    noise = ["--jitter-ms", "0.2"]
    with (
        running_detserver(
            work / "same", ttft_ms=20, itl_ms=2, model="org/det", args=[*noise, "--seed", "1"]
        ) as same,
        running_detserver(
            work / "slow",
            ttft_ms=20,
            itl_ms=2,
            model="org/det",
            args=[*noise, "--seed", "2", "--itl-scale", str(itl_scale)],
        ) as slow,
    ):
        yield same.base_url, slow.base_url


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", default="det,llama,busy", help="comma-separated: det, llama, busy")
    p.add_argument("--sessions", type=int, default=20, help="unchanged and slowed sessions each (default 20)")
    p.add_argument(
        "--seed", type=int, default=5, help="unchanged sessions that start the history (default 5)"
    )
    p.add_argument("--repeat", type=int, default=1, help="--llm-repeat for every session (default 1)")
    p.add_argument("--itl-scale", type=float, default=1.1, help="det: ITL multiplier of the slowed server")
    p.add_argument(
        "--slowdown", type=float, default=0.8, help="llama: CPU the quota leaves the server (0..1)"
    )
    p.add_argument("--lever", choices=("auto", "cgroup", "sigstop"), default="auto")
    p.add_argument("--hogs", type=int, default=0, help="busy: hog processes (default: one per core)")
    p.add_argument("-k", dest="select", help="run only the example cases matching this -k expression")
    p.add_argument("--work", type=Path, help="keep sessions and storage here (default: a temporary folder)")
    p.add_argument(
        "--pytest-arg", action="append", default=[], help="extra argument for every session (repeatable), "
        "e.g. --pytest-arg=--llm-busy-machine=warn for a smoke run on a shared machine",
    )  # fmt: skip
    args = p.parse_args(argv)
    parts = {part.strip() for part in args.part.split(",")}
    work = args.work or Path(tempfile.mkdtemp(prefix="llmperf-gate-"))
    print(f"gate quality: parts {sorted(parts)}, {args.seed} + {args.sessions} x 2 sessions each, "
          f"--llm-repeat {args.repeat}, work in {work}", flush=True)  # fmt: skip
    ok = True
    if "det" in parts:
        with det_servers(work, args.itl_scale) as (same, slow):
            attach = ["--llm-backend=openai", "--llm-model=org/det", *args.pytest_arg]
            runner = Runner(work / "det-runs", attach, args.repeat, args.select)
            sessions = schedule(
                runner, args.seed, args.sessions,
                {"extra": [f"--llm-base-url={same}"]}, {"extra": [f"--llm-base-url={slow}"]},
            )  # fmt: skip
        verdicts(f"det (ITL x{args.itl_scale})", sessions)
        ok &= acceptance(sessions)
    if parts & {"llama", "busy"}:
        llama_args = list(args.pytest_arg)  # the defaults CI runs with: pinned, one thread per server core
        runner = Runner(work / "llama-runs", llama_args, args.repeat, args.select)
        llama: list[Session] = []
        if "llama" in parts:
            lever = make_lever(args.slowdown, args.lever)
            print(f"llama: slowdown lever: {lever.name}", flush=True)
            llama = schedule(runner, args.seed, args.sessions, {}, {"lever": lever})
            verdicts(f"llama ({lever.name})", llama)
            ok &= acceptance(llama)
        if "busy" in parts:
            if not runner.saved():
                llama = schedule(runner, max(args.seed, 1), 0, {}, {})  # a history to be busy against
            for index in range(1, max(args.sessions // 5, 1) + 1):
                session = runner.session("busy", hogs=args.hogs or os.cpu_count() or 2)
                llama.append(session)
                print(line(session, index), flush=True)
            busy_report(llama)
            ok &= all(e["outcome"] == "invalid" for s in llama if s.kind == "busy" for es in s.cases.values()
                      for e in es)  # fmt: skip
    return 0 if ok else 1


def acceptance(sessions: list[Session]) -> bool:
    """At most 1 in 20 unchanged sessions fails anywhere; at least 19 in 20 slowed ones are caught."""
    unchanged = [s for s in sessions if s.kind == "unchanged"]
    slowed = [s for s in sessions if s.kind == "slowed"]
    quiet = sum(s.failed_anywhere() for s in unchanged) <= len(unchanged) // 20
    caught = sum(bool(s.regressed()) for s in slowed) >= len(slowed) - len(slowed) // 20
    return quiet and caught


if __name__ == "__main__":
    sys.exit(main())

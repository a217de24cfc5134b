"""A/B gate quality: false alarms and caught slowdowns of interleaved A/B sessions, with drift on purpose.

Each session is one pytest run with a candidate beside the baseline
(``--llm-candidate-*``), as a pull request's CI job would run it, and this
script counts what the acceptance of issue 19 is judged by:

* ``det``: two deterministic servers (TTFT 20 ms, ITL 10 ms, jitter 0.2 ms),
  sessions alternating A/A (the same latency model) and A/B (the candidate's
  ITL x``--itl-scale``, 1.05: a 5% slower decode). Seconds a session.
* ``llama``: the embedded default, two llama-servers started by the plugin
  (``--llm-candidate-model gemma3-270m``: the same model and settings, a
  server of its own, on the baseline's core), sessions alternating A/A and
  A/B; in A/B sessions the candidate server alone gets a CPU quota
  (``--slowdown 0.9``: 90% of its core, cgroup ``cpu.cfs_quota_us``), whose
  effect is printed as the TPOT ratio the sessions measured.
* ``drift``: the ``llama`` schedule, but ``--drift-after`` seconds into each
  session *both* servers lose a further ``--drift`` of their core (0.7: the
  machine 30% slower for the rest of the session), as a host whose speed
  changes halfway through. The A/B gate must hold its verdicts through it.

A session "fails anywhere" when any case is not ``pass`` (A/A must not), and
an A/B session is "caught" when a case is ``fail-regression``. Also printed:
minutes per session, and the cost of an A/B case against measuring it once
(``--part cost``: the same cases without a candidate). It prints figures and
changes nothing; it is not a test.

    .venv/bin/python benchmarks/ab_quality.py --part det --sessions 20        # ~10 min
    .venv/bin/python benchmarks/ab_quality.py --part llama --sessions 10      # ~3 min a session
    .venv/bin/python benchmarks/ab_quality.py --part drift --sessions 6
    .venv/bin/python benchmarks/ab_quality.py --part cost
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

import psutil

from pytest_llmperf.testing.harness import running_detserver

ROOT = Path(__file__).resolve().parents[1]
CGROUP = Path("/sys/fs/cgroup/cpu")
PERIOD_US = 20_000
LLAMA_CASES = "test_output_tokens and (16-1 or 16-2 or 64-1)"
DET_CASES = """
import pytest

@pytest.mark.parametrize("concurrency", [1, 2, 4])
def test_case(llm_perf, concurrency):
    llm_perf.run(input_tokens=64, output_tokens=32, concurrency=concurrency, requests=2 * concurrency + 2)
"""


@dataclass
class Session:
    kind: str
    exit_code: int
    minutes: float
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def outcomes(self) -> dict[str, str]:
        return {name: e["outcome"] for name, e in self.entries.items()}

    def failed_anywhere(self) -> bool:
        return self.exit_code != 0 or any(kind != "pass" for kind in self.outcomes().values())

    def caught(self) -> bool:
        return any(kind == "fail-regression" for kind in self.outcomes().values())

    def tpot_ratios(self) -> list[float]:
        out = []
        for e in self.entries.values():
            metric = next(
                (m for m in (e.get("ab") or {}).get("metrics", []) if m["metric"] == "tpot_ms"), None
            )
            if metric is not None:
                out.append(metric["ratio"])
        return out

    def noise_bounds(self) -> list[float]:
        return [b for e in self.entries.values() if (b := (e.get("ab") or {}).get("noise_bound")) is not None]

    def detectable(self) -> list[float]:
        return [e["ab"]["detectable_change"] for e in self.entries.values() if (e.get("ab") or {}).get(
            "detectable_change") is not None]  # fmt: skip


class Quota:
    """A CPU cgroup (v1) whose quota is a fraction of one core; holds the PIDs put into it."""

    def __init__(self, name: str) -> None:
        self.path = CGROUP / f"llmperf-ab-{os.getpid()}-{name}"
        self.path.mkdir(exist_ok=True)
        (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        self.set(None)

    def set(self, fraction: float | None) -> None:
        quota = -1 if fraction is None else max(1000, int(fraction * PERIOD_US))
        (self.path / "cpu.cfs_quota_us").write_text(str(quota))

    def add(self, pid: int) -> None:
        # The whole process, every thread of it now and later.
        (self.path / "cgroup.procs").write_text(str(pid))

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.rmdir()


@dataclass
class Levers:
    """Quotas for the baseline and candidate llama-servers a session starts (found by start order)."""

    slowdown: float | None
    drift: float | None
    drift_after_s: float
    base: Quota = field(default_factory=lambda: Quota("base"))
    cand: Quota = field(default_factory=lambda: Quota("cand"))

    def watch(self, session: subprocess.Popen[bytes]) -> threading.Thread:
        def run() -> None:
            seen: list[int] = []
            started = time.monotonic()
            drifted = False
            root = psutil.Process(session.pid)
            self.base.set(None)
            self.cand.set(self.slowdown)
            while session.poll() is None:
                with contextlib.suppress(psutil.Error):
                    for child in root.children(recursive=True):
                        if child.pid not in seen and child.name() == "llama-server":
                            seen.append(child.pid)
                            (self.base if len(seen) == 1 else self.cand).add(child.pid)
                if self.drift is not None and not drifted and time.monotonic() - started > self.drift_after_s:
                    drifted = True
                    self.base.set(self.drift)
                    self.cand.set(self.drift * (self.slowdown or 1.0))
                time.sleep(0.2)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.base.remove()
        self.cand.remove()


def pytest_session(kind: str, args: list[str], work: Path, levers: Levers | None = None) -> Session:
    bench = work / f"{kind.replace('/', '')}-{time.monotonic_ns()}.json"
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--benchmark-json={bench}",
        *args,
    ]
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    watcher = levers.watch(proc) if levers is not None else None
    output, _ = proc.communicate()
    if watcher is not None:
        watcher.join()
    minutes = (time.monotonic() - started) / 60
    entries = {}
    if bench.exists():
        for b in json.loads(bench.read_text())["benchmarks"]:
            entries[b["name"]] = b["extra_info"]["llm"]
    session = Session(kind, proc.returncode, minutes, entries)
    if proc.returncode not in (0, 1) or not entries:
        print(output.decode()[-3000:])
    return session


def line(session: Session, index: int) -> str:
    ratios = ", ".join(f"{r:.3f}" for r in session.tpot_ratios())
    detect = ", ".join(f"{d:.1%}" for d in session.noise_bounds())
    outcomes = " ".join(f"{k.split('[')[-1].rstrip(']')}={v}" for k, v in sorted(session.outcomes().items()))
    return (
        f"  {index:>2} {session.kind:<4} {session.minutes:4.1f} min  exit {session.exit_code}  {outcomes}"
        f"  tpot B/A [{ratios}]  noise bound [{detect}]"
    )


def report(name: str, sessions: list[Session]) -> None:
    aa = [s for s in sessions if s.kind == "A/A"]
    ab = [s for s in sessions if s.kind == "A/B"]
    print(f"\n{name}:")
    print(f"  A/A sessions failing anywhere: {sum(s.failed_anywhere() for s in aa)} of {len(aa)}")
    print(f"  A/B sessions caught:           {sum(s.caught() for s in ab)} of {len(ab)}")
    for kind, group in (("A/A", aa), ("A/B", ab)):
        ratios = [r for s in group for r in s.tpot_ratios()]
        detect = [d for s in group for d in s.detectable()]
        noise = [d for s in group for d in s.noise_bounds()]
        if ratios:
            print(
                f"  {kind} TPOT ratio candidate/baseline: median {median(ratios):.3f} "
                f"(min {min(ratios):.3f}, max {max(ratios):.3f}); fails from (max of tolerance and "
                f"noise): median {median(detect):.1%}, max {max(detect):.1%}; noise bound alone: median "
                f"{median(noise):.1%}, max {max(noise):.1%}"
            )
    print(f"  minutes per session: median {median(s.minutes for s in sessions):.2f}")


@contextlib.contextmanager
def det_pair(work: Path, scale: float) -> Iterator[tuple[str, str]]:
    with (
        running_detserver(work / "a", model="org/det", ttft_ms=20, itl_ms=10) as a,
        running_detserver(work / "b", model="org/det", ttft_ms=20, itl_ms=10 * scale) as b,
    ):
        yield a.base_url, b.base_url


def part_det(args: argparse.Namespace, work: Path) -> list[Session]:
    (work / "test_det.py").write_text(DET_CASES)
    sessions = []
    for i in range(args.sessions):
        kind = "A/A" if i % 2 == 0 else "A/B"
        with det_pair(work / f"s{i}", 1.0 if kind == "A/A" else args.itl_scale) as (base, cand):
            attach = [f"--llm-base-url={base}", "--llm-model=org/det", f"--llm-candidate-base-url={cand}"]
            s = pytest_session(kind, ["test_det.py", "--llm-backend=openai", *attach], work)
        sessions.append(s)
        print(line(s, i + 1), flush=True)
    return sessions


def part_llama(args: argparse.Namespace, work: Path, drift: float | None) -> list[Session]:
    sessions = []
    common = [
        str(ROOT / "examples"),
        "-k",
        args.cases,
        "--llm-candidate-model=gemma3-270m",
        "-p",
        "no:randomly",
    ]
    for i in range(args.sessions):
        kind = "A/A" if i % 2 == 0 else "A/B"
        levers = Levers(None if kind == "A/A" else args.slowdown, drift, args.drift_after)
        try:
            s = pytest_session(kind, common, work, levers)
        finally:
            levers.close()
        sessions.append(s)
        print(line(s, i + 1), flush=True)
    return sessions


def regressed(metric: dict[str, Any], tolerance: float) -> bool:
    """``judge.paired``'s rule from a saved metric: worse than both the tolerance and its noise bound."""
    ratio, bound = metric["ratio"], metric["noise_bound"]
    if metric["metric"] == "output_tok_per_s":
        return -math.log(ratio) > max(-math.log(1 - tolerance), -math.log(1 - bound))
    return math.log(ratio) > max(math.log1p(tolerance), math.log1p(bound))


def rejudge(work: Path, tolerance: float) -> None:
    """Every saved session of ``work`` judged again at another ``--llm-ab-tolerance``, exactly: each
    entry keeps every metric's ratio and noise bound, and the verdict is ``change > max(both)``."""
    sessions: dict[str, list[bool]] = {"AA": [], "AB": []}
    for path in sorted(work.rglob("*.json")):
        kind = (
            "AA"
            if path.name.startswith("AA") or (path.parent.name == "A" and path.name.startswith("A-"))
            else "AB"
        )
        entries = [b["extra_info"]["llm"] for b in json.loads(path.read_text())["benchmarks"]]
        hit = any(regressed(m, tolerance) for e in entries for m in (e.get("ab") or {}).get("metrics", []))
        other = any(e["outcome"] not in ("pass", "fail-regression") for e in entries)
        sessions[kind].append(hit or other)
    aa, ab = sessions["AA"], sessions["AB"]
    print(f"{work} at tolerance {tolerance:.0%}: A/A failing anywhere {sum(aa)} of {len(aa)}; "
          f"A/B caught {sum(ab)} of {len(ab)}")  # fmt: skip


def part_cost(args: argparse.Namespace, work: Path) -> None:
    cases = [str(ROOT / "examples"), "-k", args.cases]
    once = pytest_session("once", cases, work)
    ab = pytest_session("A/A", [*cases, "--llm-candidate-model=gemma3-270m"], work)
    print(
        f"\ncost: the cases measured once {once.minutes:.2f} min, as an A/B session {ab.minutes:.2f} min "
        f"({ab.minutes / once.minutes:.1f}x; both include starting the servers)"
    )
    for name, e in sorted(ab.entries.items()):
        base = once.entries.get(name, {})
        print(f"  {name}: {e['requests']} candidate requests in A/B vs {base.get('requests')} once")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", default="det", help="det, llama, drift or cost (comma-separated)")
    p.add_argument("--sessions", type=int, default=20, help="sessions, alternating A/A and A/B")
    p.add_argument("--itl-scale", type=float, default=1.05, help="det: the candidate's ITL factor")
    p.add_argument("--slowdown", type=float, default=0.9, help="llama: the candidate's CPU quota (of a core)")
    p.add_argument("--drift", type=float, default=0.7, help="drift: both servers' quota after --drift-after")
    p.add_argument("--drift-after", type=float, default=90.0, help="drift: seconds into each session")
    p.add_argument("--cases", default=LLAMA_CASES, help="llama: -k expression over examples/")
    p.add_argument("--work", type=Path, default=None)
    p.add_argument(
        "--rejudge",
        type=float,
        default=None,
        metavar="TOL",
        help="judge the sessions saved under --work again at this tolerance (0.03), measure nothing",
    )
    args = p.parse_args(argv)
    if args.rejudge is not None:
        rejudge(args.work, args.rejudge)
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="ab-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work: {work}; {math.ceil(args.sessions / 2)} A/A and {args.sessions // 2} A/B sessions per part")
    for part in args.part.split(","):
        if part == "det":
            report(f"det (candidate ITL x{args.itl_scale})", part_det(args, work))
        elif part == "llama":
            report(f"llama (candidate quota {args.slowdown:.0%})", part_llama(args, work, None))
        elif part == "drift":
            sessions = part_llama(args, work, args.drift)
            report(f"drift (both at {args.drift:.0%} after {args.drift_after:g} s)", sessions)
        elif part == "cost":
            part_cost(args, work)
        else:
            raise SystemExit(f"unknown part {part!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The gate over sessions, as CI runs it: a history of passing runs, failed runs kept out, repeats, busy.

Against the deterministic server (known truth: TTFT 40 ms, ITL 10 ms, or a
scaled ITL for a "slower release"), attached through the ``openai`` backend,
except the busy-machine test, which needs a server whose process we know:
the real embedded llama-server, with CPU hogs started beside it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from pytest_llmperf.testing.harness import running_detserver

TWO_CASES = """
import pytest

@pytest.mark.parametrize("concurrency", [1, 4])
def test_case(llm_perf, concurrency):
    llm_perf.run(input_tokens=32, output_tokens=32, concurrency=concurrency, requests=4 * concurrency)
"""


@contextmanager
def detserver(tmp_path: Path, name: str, itl_scale: float = 1.0) -> Iterator[str]:
    args = ("--itl-scale", str(itl_scale))
    with running_detserver(tmp_path / name, ttft_ms=40, itl_ms=10, args=args, model="org/det") as server:
        yield server.base_url


def run(pytester: pytest.Pytester, base_url: str, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "--llm-backend=openai", f"--llm-base-url={base_url}", "--llm-model=org/det", *args, timeout=300
    )


def saved(store: Path) -> list[dict[str, Any]]:
    """Every autosaved run in the storage, oldest first."""
    files = sorted(store.glob("*/[0-9][0-9][0-9][0-9]_*.json"))
    return [json.loads(f.read_text("utf-8")) for f in files]


def test_a_history_of_passing_runs_gates_on_what_unchanged_runs_showed(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makepyfile(test_gate=TWO_CASES)
    store = tmp_path / "store"
    storage = (f"--benchmark-storage=file://{store}", "--benchmark-autosave")
    with detserver(tmp_path, "release-1") as url:
        run(pytester, url, *storage).assert_outcomes(passed=2)
        for _ in range(3):
            # Each unchanged session compares with every passing run before it, then joins them.
            run(pytester, url, *storage, "--benchmark-compare").assert_outcomes(passed=2)
    with detserver(tmp_path, "release-2", itl_scale=1.3) as url:
        slower = run(pytester, url, *storage, "--benchmark-compare")
    slower.assert_outcomes(failed=2)
    slower.stdout.fnmatch_lines(
        ["*fail-regression: tpot_ms +*% vs 4 baseline runs (unchanged runs here vary +-*, so the bar is +*"]
    )
    runs = saved(store)
    assert [r["llmperf"]["passed"] for r in runs] == [True, True, True, True, False]
    assert runs[-1]["llmperf"] == {
        "schema": 1, "passed": False, "failed": 2, "errors": 0, "invalid": 0, "interrupted": False,
    }  # fmt: skip


FAST_BUT_FAILED = (
    TWO_CASES
    + """

def test_something_else():
    assert False, "another test of the session failed"
"""
)


def test_a_failed_session_is_marked_and_never_picked_as_a_baseline(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    storage = (f"--benchmark-storage=file://{store}", "--benchmark-autosave")
    pytester.makepyfile(test_gate=TWO_CASES)
    with detserver(tmp_path, "normal") as url:
        run(pytester, url, *storage).assert_outcomes(passed=2)
    # Twice as fast, but another test failed: pytest's verdict on the session, not ours, keeps it out.
    pytester.makepyfile(test_gate=FAST_BUT_FAILED)
    with detserver(tmp_path, "fast", itl_scale=0.5) as url:
        run(pytester, url, *storage).assert_outcomes(passed=2, failed=1)
    assert [r["llmperf"]["passed"] for r in saved(store)] == [True, False]
    assert saved(store)[1]["llmperf"]["failed"] == 1

    pytester.makepyfile(test_gate=TWO_CASES)
    with detserver(tmp_path, "normal-again") as url:
        # Against the fast run this would be +100%: it passes because the failed run is skipped.
        picked = run(pytester, url, f"--benchmark-storage=file://{store}", "--benchmark-compare")
        named = run(pytester, url, f"--benchmark-storage=file://{store}", "--benchmark-compare=0002")
    picked.assert_outcomes(passed=2)
    assert named.ret == pytest.ExitCode.USAGE_ERROR
    named.stderr.fnmatch_lines(
        ["*0002_*.json: that session did not pass (1 failed), so it cannot be a baseline; name a run that "
         "passed in --benchmark-compare=0002, or give bare --benchmark-compare*"]
    )  # fmt: skip


def test_repeats_are_interleaved_and_the_last_one_carries_the_verdict(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makepyfile(test_gate=TWO_CASES)
    store = tmp_path / "store"
    out = tmp_path / "run.json"
    with detserver(tmp_path, "release-1") as url:
        first = run(
            pytester, url, "--llm-repeat=3", "-v", f"--benchmark-storage=file://{store}",
            "--benchmark-autosave", f"--benchmark-json={out}",
        )  # fmt: skip
    first.assert_outcomes(passed=6)
    ran = [line for line in first.outlines if line.startswith("test_gate.py::") and "PASSED" in line]
    order = [line.split("::")[1].split(" ")[0] for line in ran]
    assert order == [
        "test_case[org/det-repeat1-1]", "test_case[org/det-repeat1-4]",
        "test_case[org/det-repeat2-1]", "test_case[org/det-repeat2-4]",
        "test_case[org/det-repeat3-1]", "test_case[org/det-repeat3-4]",
    ]  # fmt: skip
    entries = {
        b["fullname"]: b["extra_info"]["llm"] for b in json.loads(out.read_text("utf-8"))["benchmarks"]
    }
    last = entries["test_gate.py::test_case[org/det-repeat3-4]"]
    assert (last["case"], last["repeat"], last["repeats"]) == ("test_gate.py::test_case[org/det-4]", 3, 3)
    assert len(last["repeat_spread"]["tpot_ms"]["medians"]) == 3
    assert last["repeat_spread"]["tpot_ms"]["spread_pct"] >= 0
    interim = entries["test_gate.py::test_case[org/det-repeat1-4]"]
    assert (interim["repeat"], "repeat_spread" in interim) == (1, False)

    with detserver(tmp_path, "release-2", itl_scale=1.5) as url:
        slower = run(
            pytester, url, "--llm-repeat=3", f"--benchmark-storage=file://{store}", "--benchmark-compare"
        )
    # Each repeat is checked on its own (no budget here, so they pass); the last one of each case fails.
    slower.assert_outcomes(passed=4, failed=2)
    slower.stdout.fnmatch_lines(
        ["*fail-regression: tpot_ms +*% vs one baseline run (95% CI*3/3 repeats vary +-*"]
    )


HOG = "while True:\n    pass\n"
SMALL_CASE = """
def test_small(llm_perf):
    llm_perf.run(input_tokens=16, output_tokens=16, concurrency=1, requests=4, warmup=1)
"""


def test_a_cpu_hog_beside_llama_server_makes_the_case_invalid_not_a_regression(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makepyfile(test_busy=SMALL_CASE)
    out = tmp_path / "busy.json"
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(psutil.cpu_count() or 2)]
    try:
        result = pytester.runpytest_subprocess(
            "--llm-server-option=threads=2", "--llm-busy-machine=fail", f"--benchmark-json={out}", timeout=600
        )
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait(timeout=30)
    assert result.parseoutcomes() == {"invalid": 1}
    result.stdout.fnmatch_lines(
        ["*invalid measurement: machine busy: other processes used * core* while * of * cores were idle; "
         "the server got * of its 2 cores*"]
    )  # fmt: skip
    document = json.loads(out.read_text("utf-8"))
    llm = document["benchmarks"][0]["extra_info"]["llm"]
    assert llm["outcome"] == "invalid"
    assert llm["telemetry"]["load"]["others_cores_mean"] >= 0.25
    assert document["llmperf"]["passed"] is False
    assert document["llmperf"]["invalid"] == 1

"""Capacity and sweeps through the plugin, against a server whose latency model gives the answers.

The deterministic server in its batch-limited mode (``--max-batch 8
--itl-growth-ms G``, TTFT 20 ms, ITL 10 ms; see ``testing/detserver.py``)
generates at most 8 requests at once, and the gap after each token is
``10 + G x (active - 1)`` ms. So, for 16 output tokens in a closed loop:

* TPOT at concurrency c <= 8 is ``10 + G (c - 1)``: with G = 2 ms and the
  per-request limit ``slo_tpot_ms=21``, c = 6 gives 20 ms (every request
  good) and c = 7 gives 22 ms (none good), so **the capacity is 6**; with
  G = 4 ms it is 3 (c = 3: 18 ms, c = 4: 22 ms).
* output throughput ``16 c / (20 + 15 (10 + 2 (c - 1)))`` tok/s rises
  94 -> 160 -> 246 -> 337 for c = 1, 2, 4, 8 (each doubling +37% or more)
  and stays at 337 beyond 8, where requests only queue: **the knee is 8**,
  and the sweep stops after 16 and 32 add nothing.
* open-loop constant arrivals at r req/s keep ``a = r A / (1 - r B)`` requests
  active (Little's law, A = 140 ms, B = 30 ms), so TPOT ``10 + 2 (a - 1)``
  stays within 21 ms up to r = 19.4: with steps of 2 req/s the rate capacity
  is 18 (a = 5.5) and 20 (a = 7) misses. Each rate probe runs for four
  request lifetimes so that most requests see that steady load; one step
  either side is allowed for the active count's wobble at constant arrivals.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from reliability_support import bench_entries

from pytest_llmperf.testing.harness import DetServer, running_detserver

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

CASES = """
import pytest

@pytest.mark.llm_budget(slo_tpot_ms=21, capacity_concurrency_min=2)
def test_capacity(llm_perf):
    found = llm_perf.capacity(input_tokens=16, output_tokens=16, high=16{extra})
    print("CAPACITY", found.concurrency, found.rate)

def test_sweep(llm_perf):
    sweep = llm_perf.sweep(input_tokens=16, output_tokens=16, concurrency="auto", max_concurrency=32)
    print("SWEEP", [p.scenario.concurrency for p in sweep.points], sweep.knee_index, sweep.stopped)
"""


@contextmanager
def batched(tmp_path: Path, name: str, growth_ms: float) -> Iterator[DetServer]:
    args = ("--max-batch", "8", "--itl-growth-ms", str(growth_ms))
    with running_detserver(tmp_path / name, ttft_ms=20, itl_ms=10, args=args, model="org/det") as server:
        yield server


def session(pytester: pytest.Pytester, server: DetServer, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "--llm-backend=openai", f"--llm-base-url={server.base_url}", "--llm-model=org/det", "-s",
        "-p", "no:randomly", *args, timeout=300,
    )  # fmt: skip


def test_the_capacity_and_the_knee_are_where_the_latency_model_puts_them(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makepyfile(test_cap=CASES.format(extra=', search="both", rate_step=2, arrival="constant"'))
    out, report = tmp_path / "run.json", tmp_path / "report"
    with batched(tmp_path, "g2", 2) as server:
        result = session(pytester, server, f"--benchmark-json={out}", f"--llm-report={report}")
    result.assert_outcomes(passed=2)
    entries = bench_entries(out)

    capacity = entries["test_capacity[org/det]"]["capacity"]
    assert (capacity["concurrency"], capacity["concurrency_first_miss"]) == (6, 7)
    assert [(p["concurrency"], p["met"]) for p in capacity["probes"]] == [
        (1, True), (2, True), (4, True), (8, False), (6, True), (7, False),
    ]  # fmt: skip
    assert capacity["probes"][5]["reasons"] == ["SLO attainment 0.0% < 99% (0 of 14 good)"]
    assert capacity["rate"] == pytest.approx(18, abs=2), capacity["rate_probes"]
    llm = entries["test_capacity[org/det]"]
    # The entry's figures are those at the capacity found.
    assert llm["concurrency"] == 6
    assert llm["tpot_ms"]["p50"] == pytest.approx(20, abs=0.6)
    assert llm["slo"] == {"tpot_ms": 21.0}
    assert llm["slo_attainment"] == 1.0

    sweep = entries["test_sweep[org/det]"]["sweep"]
    assert [p["concurrency"] for p in sweep["points"]] == [1, 2, 4, 8, 16, 32]
    assert (sweep["knee"], sweep["knee_load"]) == (3, 8)
    assert sweep["stopped"] == "saturated: throughput at 16, 32 rose less than 10% over the best before"
    rates = [p["output_tok_per_s"] for p in sweep["points"]]
    for got, model in zip(rates, (94, 160, 246, 337, 337, 337), strict=True):
        assert got == pytest.approx(model, rel=0.06)
    # The entry (and pytest-benchmark's stats) are the first, lightest load: measured by every run.
    assert entries["test_sweep[org/det]"]["concurrency"] == 1
    assert sweep["peak_output_tok_per_s"] == max(rates)

    markdown = (report / "llmperf-summary.md").read_text()
    assert "### Capacity on " in markdown
    assert "| org/det | openai | - | - | 6; " in markdown
    assert "| c=8 (knee) |" in markdown
    for png in ("sweep-test_sweep_org_det.png", "capacity-test_capacity_org_det.png"):
        assert (report / png).read_bytes().startswith(PNG_MAGIC)
    result.stdout.fnmatch_lines(["*in16-out16 capacity 6; *.* req/s*", "*in16-out16-c1 sweep, knee 8*"])


def test_a_lower_capacity_than_the_baseline_fails_and_the_cli_says_so(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makepyfile(test_cap=CASES.format(extra=""))
    storage = f"--benchmark-storage=file://{tmp_path}/store"
    with batched(tmp_path, "release-1", 2) as server:
        first = session(pytester, server, "-k", "capacity", "--benchmark-autosave", storage,
                        f"--benchmark-json={tmp_path}/old.json")  # fmt: skip
    first.assert_outcomes(passed=1)
    with batched(tmp_path, "release-2", 4) as server:
        second = session(pytester, server, "-k", "capacity", "--benchmark-compare=0001", storage,
                         f"--benchmark-json={tmp_path}/new.json")  # fmt: skip
        floor = session(pytester, server, "-k", "capacity", "--llm-budget=capacity_concurrency_min=4")
    second.assert_outcomes(failed=1)
    second.stdout.fnmatch_lines(
        ["*fail-regression: capacity_concurrency 6 -> 3 (-50.0% vs 1 baseline run; the bar is -20.0%*"]
    )
    floor.assert_outcomes(failed=1)
    floor.stdout.fnmatch_lines(["*fail-budget: capacity_concurrency = 3 below budget 4 (--llm-budget)*"])

    cli = subprocess.run(
        [sys.executable, "-m", "pytest_llmperf", "compare", f"{tmp_path}/old.json", f"{tmp_path}/new.json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert cli.returncode == 1, cli.stderr
    lines = cli.stdout.splitlines()
    assert lines[0] == "test_cap.py::test_capacity[org/det]  (1 baseline run): REGRESSION"
    capacity_line = next(line for line in lines if "capacity (concurrency)" in line)
    assert capacity_line.split() == ["capacity", "(concurrency)", "6", "3", "-50.0%", "-20%", "REGRESSED"]
    assert any(line.split()[:2] == ["goodput", "req/s"] and line.endswith("(not gated)") for line in lines)

    rendered = subprocess.run(
        [sys.executable, "-m", "pytest_llmperf", "report", f"{tmp_path}/new.json", "--out", f"{tmp_path}/re"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    markdown = (tmp_path / "re" / "llmperf-summary.md").read_text()
    assert "| org/det | openai | - | - | 3 |" in markdown
    assert (tmp_path / "re" / "capacity-test_capacity_org_det.png").read_bytes().startswith(PNG_MAGIC)
    unchanged = subprocess.run(
        [sys.executable, "-m", "pytest_llmperf", "compare", f"{tmp_path}/old.json", f"{tmp_path}/old.json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert unchanged.returncode == 0, unchanged.stdout
    assert json.loads((tmp_path / "old.json").read_text())["benchmarks"][0]["extra_info"]["llm"]["capacity"]

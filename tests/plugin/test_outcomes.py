"""One outcome per test, and the same one everywhere (issue 11, cases 1 and 2).

A run whose every request fails must fail (errors are failures by default), and
the outcome pytest reports for a test (its own ``assert`` failing after a good
measurement, a bad argument, a missed budget) must be the one the JSON entry,
the JSONL, the terminal table, the Markdown report and the JUnit properties
carry. The server is our detserver, attached through the ``openai`` backend: a
measuring instrument that answers HTTP 429/503/401 with OpenAI's error bodies on
purpose, which no real engine does on demand. Inner projects run with
``filterwarnings = error``, as this repository does.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from reliability_support import (
    INI_WARNINGS_ARE_ERRORS,
    attach_args,
    bench_entries,
    outcome_lines,
    request_lines,
)

from pytest_llmperf.errors import BaselineError
from pytest_llmperf.judge.baseline import load_baseline
from pytest_llmperf.testing.harness import running_detserver

NO_BUDGET = """
def test_run(llm_perf):
    llm_perf.run(input_tokens=17, output_tokens=8, concurrency=2, requests=8, warmup=0)
"""

# status, the start of the message the server put in its JSON error body
HTTP_FAULTS = [
    ("http429", 429, "Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1."),
    ("http503", 503, "The engine is currently overloaded, please try again later"),
    ("http401", 401, "Incorrect API key provided."),
]


@pytest.mark.parametrize(("fault", "status", "message"), HTTP_FAULTS, ids=[f[0] for f in HTTP_FAULTS])
def test_a_run_whose_every_request_fails_is_a_failure_with_the_servers_message(
    pytester: pytest.Pytester, tmp_path: Path, fault: str, status: int, message: str
) -> None:
    bench, requests = tmp_path / "bench.json", tmp_path / "requests"
    pytester.makeini(INI_WARNINGS_ARE_ERRORS)
    pytester.makepyfile(test_run=NO_BUDGET)
    with running_detserver(tmp_path / "server", model="org/det", ttft_ms=5, itl_ms=2, fault=fault) as server:
        result = pytester.runpytest_subprocess(
            *attach_args(server), f"--benchmark-json={bench}", f"--llm-save-requests={requests}", timeout=120
        )

    # No budget was given: errors fail the test, and the line names the count and the first error.
    result.assert_outcomes(failed=1)
    reason = (
        f"8 of 8 requests failed (error_rate 1 > error_rate_max 0, the default: errors fail a test "
        f"unless a budget allows them); first: HTTP {status}: {message}"
    )
    result.stdout.fnmatch_lines([f"*fail-budget: {reason}*"])
    assert "Not saving anything" not in result.stdout.str() + result.stderr.str()

    # An entry is written though no request completed: metrics null, errors counted.
    llm = bench_entries(bench)["test_run[org/det]"]
    assert (llm["requests"], llm["completed"], llm["errors"], llm["error_rate"]) == (8, 0, 8, 1.0)
    assert llm["ttft_ms"] is None
    assert llm["output_tok_per_s"] is None
    assert llm["outcome"] == "fail-budget"
    assert llm["reasons"] == [reason]
    lines = request_lines(requests)
    assert [line["error"] for line in lines] == [f"HTTP {status}: {message}"] * 8
    assert outcome_lines(requests)["test_run.py::test_run[org/det]"]["outcome"] == "fail-budget"

    # pytest-benchmark's own compare command and our baseline reader both still read the file.
    compare = subprocess.run(
        [str(Path(sys.executable).parent / "pytest-benchmark"), "compare", str(bench)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert compare.returncode == 0, compare.stdout + compare.stderr
    with pytest.raises(BaselineError, match="holds no pytest-llmperf entries"):
        load_baseline(bench)  # a run that measured nothing is no baseline, and the reader says so


def test_an_error_budget_raised_on_purpose_still_never_passes_a_run_that_completed_nothing(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makeini(INI_WARNINGS_ARE_ERRORS)
    pytester.makepyfile(test_run=NO_BUDGET)
    with running_detserver(tmp_path / "server", model="org/det", fault="http503") as server:
        result = pytester.runpytest_subprocess(
            *attach_args(server), "--llm-budget=error_rate_max=1", timeout=120
        )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert result.parseoutcomes() == {"invalid": 1}  # a failure pytest counts under the plugin's word
    result.stdout.fnmatch_lines(
        ["*invalid: no request completed (8 of 8 failed), so nothing was measured; first: HTTP 503: *"]
    )


# A good run, a run whose body fails its own assert after measuring, a run over budget, and a
# run that never measures (a bad argument): pytest says 1 passed, 3 failed.
FOUR = """
import pytest

def test_good(llm_perf):
    llm_perf.run(input_tokens=17, output_tokens=4, requests=4)

def test_assert(llm_perf):
    result = llm_perf.run(input_tokens=17, output_tokens=4, requests=4)
    assert result.summary.completed == 99

@pytest.mark.llm_budget(ttft_ms_p95=0.001)
def test_budget(llm_perf):
    llm_perf.run(input_tokens=17, output_tokens=4, requests=4)

def test_bad_argument(llm_perf):
    llm_perf.run(input_tokens=17, output_tokens=4, requests=0)

def test_all_time_out(llm_perf):
    llm_perf.run(input_tokens=17, output_tokens=4, requests=2, timeout_s=0.001)
"""

FINAL = {
    "test_good": ("pass", None),
    "test_assert": ("fail", "AssertionError: assert 4 == 99"),
    "test_budget": ("fail-budget", "ttft_ms p95 = "),
    "test_bad_argument": ("fail", "llm_perf.run(requests=0): "),
    "test_all_time_out": ("fail-budget", "2 of 2 requests failed (error_rate 1 > error_rate_max 0, "),
}


def test_every_artifact_carries_the_outcome_pytest_reported(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    pytester.makeini(INI_WARNINGS_ARE_ERRORS)
    pytester.makepyfile(test_four=FOUR)
    with running_detserver(tmp_path / "server", model="org/det", ttft_ms=5, itl_ms=2) as server:
        result = pytester.runpytest_subprocess(
            *attach_args(server),
            "-p",
            "no:randomly",
            f"--benchmark-json={out / 'bench.json'}",
            f"--llm-save-requests={out / 'requests'}",
            f"--llm-report={out / 'report'}",
            f"--junitxml={out / 'junit.xml'}",
            timeout=120,
        )
    result.assert_outcomes(passed=1, failed=4)
    counts = result.parseoutcomes()

    # The JSON entry of each test that measured (the bad argument measured nothing), also of the
    # one whose every request timed out; pytest-benchmark's compare and our reader load the file.
    entries = bench_entries(out / "bench.json")
    measured = ("test_good", "test_assert", "test_budget", "test_all_time_out")
    assert set(entries) == {f"{name}[org/det]" for name in measured}
    for name, llm in entries.items():
        kind, reason = FINAL[name.split("[")[0]]
        assert llm["outcome"] == kind, (name, llm["outcome"], llm["reasons"])
        # What was measured is kept, whatever the outcome.
        assert llm["completed"] == (0 if name.startswith("test_all_time_out") else 4)
        if reason is None:
            assert llm["reasons"] == []
        else:
            assert llm["reasons"][0].startswith(reason), llm["reasons"]

    baseline = load_baseline(out / "bench.json")
    assert baseline.llm("test_four.py::test_good[org/det]") is not None
    compare = subprocess.run(
        [str(Path(sys.executable).parent / "pytest-benchmark"), "compare", str(out / "bench.json")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert compare.returncode == 0, compare.stdout + compare.stderr
    assert "test_good[org/det]" in compare.stdout

    # The final JSONL line of each test that sent requests.
    finals = outcome_lines(out / "requests")
    assert {nodeid.split("::")[1].split("[")[0]: line["outcome"] for nodeid, line in finals.items()} == {
        name: kind for name, (kind, _reason) in FINAL.items() if name != "test_bad_argument"
    }

    # The terminal table: one row per test, its outcome in the last column.
    table = result.stdout.str().split("llmperf summary", 1)[1]
    for name, (kind, _reason) in FINAL.items():
        assert re.search(rf"^org/det\s+{name}\[org/det\]\s.*\s{re.escape(kind)}$", table, re.M), (name, table)

    # The Markdown report: the same outcomes, and the same counts as pytest's summary line.
    markdown = (out / "report" / "llmperf-summary.md").read_text()
    headline = markdown.splitlines()[0]
    found = {
        word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|invalid|skipped|errors?)\b", headline)
    }
    assert headline.startswith("## LLM performance: 5 tests: ")
    assert found == {"failed": counts["failed"], "passed": counts["passed"]}
    for name, (kind, _reason) in FINAL.items():
        row = next(line for line in markdown.splitlines() if line.startswith(f"| `{name}["))
        assert row.rstrip(" |").endswith(kind) or kind in row, row

    # JUnit: llm_outcome of every test.
    cases = {c.get("name"): c for c in ET.parse(out / "junit.xml").getroot().iter("testcase")}
    for name, (kind, _reason) in FINAL.items():
        props = {p.get("name"): p.get("value") for p in cases[f"{name}[org/det]"].iter("property")}
        assert props.get("llm_outcome") == kind, (name, props)


def test_the_bad_argument_is_one_line_without_a_traceback(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makeini(INI_WARNINGS_ARE_ERRORS)
    pytester.makepyfile(test_four=FOUR)
    with running_detserver(tmp_path / "server", model="org/det", ttft_ms=5, itl_ms=2) as server:
        result = pytester.runpytest_subprocess(
            *attach_args(server), "-k", "bad_argument", f"--benchmark-json={tmp_path / 'b.json'}", timeout=120
        )
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    result.stdout.fnmatch_lines(
        ["*llm_perf.run(requests=0): requests must be a whole number >= 1; ask for at least one request*"]
    )
    assert "Traceback" not in text
    assert "perf.py" not in text  # no frame of ours is shown
    assert "pytest_llmperf/perf/" not in text
    assert "Benchmark fixture was not used" not in text + result.stderr.str()
    # Nothing was measured, so pytest-benchmark has nothing to save; we say so, it does not warn.
    assert not (tmp_path / "b.json").exists()
    assert "Not saving anything" not in text + result.stderr.str()
    result.stdout.fnmatch_lines(["*no test measured anything, so --benchmark-json wrote no file*"])


# The endpoint freezes (SIGSTOP) once 4 measured requests are done: the rest time out, and the
# check after the run finds it no longer answering.
FROZEN = """
import os, signal, threading, time
from pathlib import Path

def freeze_after(pid, n, requests):
    while sum(p.read_text().count('"warmup":false') for p in Path(requests).glob("*.jsonl")) < n:
        time.sleep(0.01)
    os.kill(pid, signal.SIGSTOP)

def test_frozen(llm_perf):
    threading.Thread(target=freeze_after, args=({pid}, 4, {requests!r}), daemon=True).start()
    llm_perf.run(input_tokens=17, output_tokens=16, concurrency=4, requests=16, warmup=0)
"""


def test_a_server_that_stops_answering_mid_run_fails_the_test_in_every_artifact(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    pytester.makeini(INI_WARNINGS_ARE_ERRORS)
    with running_detserver(tmp_path / "server", model="org/det", ttft_ms=5, itl_ms=20) as server:
        pid = server.process.pid
        pytester.makepyfile(test_frozen=FROZEN.format(pid=pid, requests=str(out / "requests")))
        try:
            result = pytester.runpytest_subprocess(
                *attach_args(server), "--llm-request-timeout=2",
                f"--benchmark-json={out / 'bench.json'}", f"--llm-save-requests={out / 'requests'}",
                f"--junitxml={out / 'junit.xml'}", timeout=120,
            )  # fmt: skip
        finally:
            os.kill(pid, signal.SIGCONT)  # so that it can be stopped
    result.assert_outcomes(failed=1)
    died = f"the endpoint at {server.base_url} stopped answering"
    result.stdout.fnmatch_lines([f"*{died}*"])
    llm = bench_entries(out / "bench.json")["test_frozen[org/det]"]
    assert llm["outcome"] == "fail"
    assert llm["reasons"][0] == died
    # 4 completed before the freeze (more only if the freezing thread ran very late); the rest timed out.
    done, failed = llm["completed"], llm["errors"]
    assert done >= 4
    assert done + failed == 16
    assert llm["reasons"][1].startswith(f"fail-budget: {failed} of 16 requests failed (error_rate ")
    assert llm["reasons"][1].endswith("first: timeout after 2 s")
    assert outcome_lines(out / "requests")["test_frozen.py::test_frozen[org/det]"]["outcome"] == "fail"
    table = result.stdout.str().split("llmperf summary", 1)[1]
    assert re.search(r"^org/det\s+test_frozen\[org/det\]\s.*%\s+fail$", table, re.M), table
    case = next(ET.parse(out / "junit.xml").getroot().iter("testcase"))
    assert {p.get("name"): p.get("value") for p in case.iter("property")}["llm_outcome"] == "fail"


# The server stops every answer at half its length, so each measurement is invalid; one body
# also fails its own assert after measuring.
SHORT_ANSWERS = """
def test_invalid(llm_perf):
    llm_perf.run(input_tokens=17, output_tokens=8, requests=2)

def test_invalid_then_assert(llm_perf):
    llm_perf.run(input_tokens=17, output_tokens=8, requests=2)
    assert False, "the body's own check"
"""


def test_pytest_says_invalid_only_when_the_invalid_measurement_is_why_the_test_failed(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    pytester.makepyfile(test_short=SHORT_ANSWERS)
    with running_detserver(
        tmp_path / "server", model="org/det", ttft_ms=5, itl_ms=2, fault="early-eos"
    ) as server:
        result = pytester.runpytest_subprocess(
            *attach_args(server), "-p", "no:randomly", f"--benchmark-json={out / 'bench.json'}",
            timeout=120,
        )  # fmt: skip
    # pytest's word for each test is the outcome of every artifact: the second is a plain failure.
    assert result.parseoutcomes() == {"invalid": 1, "failed": 1}
    result.stdout.fnmatch_lines(["FAILED test_short.py::test_invalid_then_assert[[]org/det[]]*"])
    entries = bench_entries(out / "bench.json")
    assert entries["test_invalid[org/det]"]["outcome"] == "invalid"
    after = entries["test_invalid_then_assert[org/det]"]
    assert after["outcome"] == "fail"
    assert after["reasons"][0] == "AssertionError: the body's own check"
    assert after["reasons"][1].startswith("invalid: invalid measurement: ")

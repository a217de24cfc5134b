"""Options that work alone work together (issue 20): client workers at pytest's default verbosity.

``--llm-client-workers 2`` with live progress on (pytest's default verbosity,
and every CI log) used to fail every test: live progress armed its timer on
an event loop that the parent of worker processes does not run. These runs
are at default verbosity, against a deterministic server (a measuring
instrument), and check that the workers did the work (a dataset run
included: it used to run in the test's own process) and every artifact
agrees on the outcome.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from reliability_support import INI_WARNINGS_ARE_ERRORS, attach_args, bench_entries, outcome_lines

from pytest_llmperf.testing.harness import running_detserver

RUNS = """
def test_closed_64(llm_perf):
    llm_perf.run(input_tokens=17, output_tokens=8, concurrency=64, requests=128)

def test_open_duration(llm_perf):
    llm_perf.run(input_tokens=17, output_tokens=8, concurrency=16, rate=40.0, duration_s=1.5)

def test_dataset(llm_perf):
    llm_perf.run(input_tokens=None, output_tokens=8, concurrency=4, requests=8, dataset="prompts.jsonl")
"""


def test_client_workers_with_live_progress_closed_open_and_dataset(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makeini(INI_WARNINGS_ARE_ERRORS)
    pytester.makepyfile(test_runs=RUNS)
    prompts = [{"prompt": f"question number {i} about the weather in town {i}"} for i in range(12)]
    (pytester.path / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    out = tmp_path / "out"
    with running_detserver(tmp_path / "server", model="org/det", ttft_ms=5, itl_ms=2) as server:
        result = pytester.runpytest_subprocess(
            *attach_args(server), "--llm-client-workers=2", f"--benchmark-json={out / 'b.json'}",
            f"--llm-save-requests={out / 'requests'}", timeout=300,
        )  # fmt: skip
    text = result.stdout.str() + result.stderr.str()
    assert "no running event loop" not in text
    assert "Traceback" not in text
    result.assert_outcomes(passed=3)
    entries = bench_entries(out / "b.json")
    assert {name: llm["outcome"] for name, llm in entries.items()} == {
        "test_closed_64[org/det]": "pass",
        "test_open_duration[org/det]": "pass",
        "test_dataset[org/det]": "pass",
    }
    assert {line["outcome"] for line in outcome_lines(out / "requests").values()} == {"pass"}
    for name in ("test_closed_64[org/det]", "test_open_duration[org/det]", "test_dataset[org/det]"):
        assert entries[name]["client"]["workers"] == 2, name  # the workers measured it
    assert entries["test_closed_64[org/det]"]["completed"] == 128

"""A/B in one session (issue 19): baseline and candidate interleaved, judged on paired ratios.

Two deterministic servers (measuring instruments with known truth, attached
through the ``openai`` backend) stand for production and a canary: the same
latency model for A/A, the candidate's inter-token latency 5% longer for A/B.
The last test is the real engine: the plugin starts a second llama-server
as the candidate (``--llm-candidate-server-option``). Every artifact must
tell the same outcome: pytest, the JSON entry (with both
sides and every block under ``ab``), the JSONL's last line, the terminal
table, the Markdown report and JUnit. Inner projects run at pytest's default
verbosity (live progress on) with ``filterwarnings = error``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from reliability_support import (
    INI_WARNINGS_ARE_ERRORS,
    attach_args,
    bench_entries,
    ensure_embedded_default,
    llama_servers_with,
    outcome_lines,
    unique_server_args,
)

from pytest_llmperf.servers.base import free_port
from pytest_llmperf.testing.harness import running_detserver

CASES = """
import pytest

@pytest.mark.parametrize("concurrency", [1, 2])
def test_case(llm_perf, concurrency):
    llm_perf.run(input_tokens=17, output_tokens=16, concurrency=concurrency, requests=8)
"""


def run_ab(
    pytester: pytest.Pytester, tmp_path: Path, candidate_itl_ms: float, *extra: str, fault: str | None = None
) -> pytest.RunResult:
    """Both servers for the ``with`` block, the candidate with ``candidate_itl_ms`` and ``fault``;
    artifacts under ``tmp_path / "out"``."""
    pytester.makeini(INI_WARNINGS_ARE_ERRORS)
    pytester.makepyfile(test_ab=CASES)
    out = tmp_path / "out"
    with (
        running_detserver(tmp_path / "a", model="org/det", ttft_ms=20, itl_ms=10) as base,
        running_detserver(
            tmp_path / "b", model="org/det", ttft_ms=20, itl_ms=candidate_itl_ms, fault=fault
        ) as cand,
    ):
        return pytester.runpytest_subprocess(
            *attach_args(base), f"--llm-candidate-base-url={cand.base_url}",
            f"--benchmark-json={out / 'bench.json'}", f"--llm-save-requests={out / 'requests'}",
            f"--llm-report={out / 'report'}", f"--junitxml={out / 'junit.xml'}", *extra, timeout=300,
        )  # fmt: skip


def artifacts_say(result: pytest.RunResult, out: Path, kind: str) -> dict[str, dict[str, object]]:
    """The same outcome in the JSON, the JSONL, the terminal table, the Markdown and JUnit."""
    entries = bench_entries(out / "bench.json")
    assert set(entries) == {"test_case[org/det-1]", "test_case[org/det-2]"}
    for llm in entries.values():
        assert llm["outcome"] == kind
    finals = outcome_lines(out / "requests")
    assert {line["outcome"] for line in finals.values()} == {kind}
    table = result.stdout.str().split("llmperf summary", 1)[1]
    assert len(re.findall(rf"^org/det\s+test_case\[org/det-\d\]\s.*\s{re.escape(kind)}$", table, re.M)) == 2
    markdown = (out / "report" / "llmperf-summary.md").read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("| `test_case[")]
    assert sum(1 for line in rows if line.endswith(f" {kind} |")) == 2  # the summary table's last column
    assert sum(1 for line in rows if "A/B " in line) == 2  # the A/B table: one verdict line per case
    for case in ET.parse(out / "junit.xml").getroot().iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        assert props.get("llm_outcome") == kind
    return entries


def test_a_candidate_equal_to_the_baseline_passes_and_says_what_it_could_resolve(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    result = run_ab(pytester, tmp_path, candidate_itl_ms=10)
    result.assert_outcomes(passed=2)
    entries = artifacts_say(result, tmp_path / "out", "pass")
    for llm in entries.values():
        ab = llm["ab"]
        assert isinstance(ab, dict)
        assert ab["verdict"] == "pass"
        assert ab["valid_blocks"] == 8
        assert len(ab["blocks"]) == 8
        assert {b["order"] for b in ab["blocks"]} == {"AB", "BA"}
        assert ab["sides"]["baseline"]["requests"] == ab["sides"]["candidate"]["requests"] == llm["requests"]
        tpot = next(m for m in ab["metrics"] if m["metric"] == "tpot_ms")
        assert 0.97 < tpot["ratio"] < 1.03
        # The self-check: the change this session could have caught, from its own blocks.
        assert 0 < ab["detectable_change"] < 0.05
        assert 0 < ab["noise_bound"] <= ab["detectable_change"]  # here the 3% tolerance sets the bar
        assert ab["line"].startswith("A/B pass: candidate tpot_ms ")
        assert any(note.startswith("A/B pass: ") for note in llm["notes"])  # type: ignore[union-attr]


def test_a_candidate_five_percent_slower_fails_in_every_artifact(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    result = run_ab(pytester, tmp_path, candidate_itl_ms=10.5)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*candidate tpot_ms +*% (95% CI +*..+*%) over 8 blocks vs baseline*"])
    entries = artifacts_say(result, tmp_path / "out", "fail-regression")
    for llm in entries.values():
        reasons = llm["reasons"]
        assert isinstance(reasons, list)
        tpot = next(r for r in reasons if r.startswith("candidate tpot_ms"))
        change = float(re.match(r"candidate tpot_ms \+([\d.]+)%", tpot).group(1))  # type: ignore[union-attr]
        assert 3.5 < change < 6.5  # ITL +5% and a fixed TTFT share: TPOT about +5%
        ab = llm["ab"]
        assert isinstance(ab, dict)
        assert ab["verdict"] == "regression"


def test_a_candidate_that_refuses_connections_is_one_line_and_loses_nothing(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makeini(INI_WARNINGS_ARE_ERRORS)
    pytester.makepyfile(test_ab=CASES)
    gone = f"http://127.0.0.1:{free_port()}"
    with running_detserver(tmp_path / "a", model="org/det", ttft_ms=20, itl_ms=10) as base:
        result = pytester.runpytest_subprocess(
            *attach_args(base), f"--llm-candidate-base-url={gone}", f"--benchmark-json={tmp_path / 'b.json'}",
            timeout=120,
        )  # fmt: skip
    result.assert_outcomes(failed=2)
    text = result.stdout.str()
    assert gone in text
    assert "Traceback" not in text
    assert "pytest_llmperf/perf/" not in text


def test_a_candidate_that_dies_mid_session_is_a_failure_that_keeps_the_blocks_measured(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    result = run_ab(pytester, tmp_path, 10, "-k", "org/det-1", fault="die-after=12")
    result.assert_outcomes(failed=1)
    llm = bench_entries(tmp_path / "out" / "bench.json")["test_case[org/det-1]"]
    assert llm["outcome"] in ("invalid", "fail-budget", "fail")
    ab = llm["ab"]
    assert isinstance(ab, dict)
    assert ab["blocks"], "the blocks measured before the candidate died are kept"
    assert ab["sides"]["baseline"]["requests"] > 0


def test_a_candidate_answering_errors_fails_with_the_servers_message_like_any_run(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    result = run_ab(pytester, tmp_path, 10, "-k", "org/det-1", fault="http503")
    result.assert_outcomes(failed=1)
    message = "HTTP 503: The engine is currently overloaded, please try again later"
    result.stdout.fnmatch_lines([f"*fail-budget: 8 of 8 requests failed*first: {message}*"])
    llm = bench_entries(tmp_path / "out" / "bench.json")["test_case[org/det-1]"]
    assert llm["outcome"] == "fail-budget"
    assert llm["errors"] == 8
    ab = llm["ab"]
    assert isinstance(ab, dict)
    assert ab["verdict"] == "invalid"  # no block could be trusted: every candidate request failed
    assert ab["sides"]["baseline"]["requests"] == 8
    assert all("candidate: 1 of 1 requests failed" in b["dropped"] for b in ab["blocks"])


LLAMA_CASE = """
def test_case(llm_perf):
    llm_perf.run(input_tokens=16, output_tokens=4, concurrency=1, requests=4)
"""


def test_a_candidate_the_plugin_starts_is_a_llama_server_of_its_own_stopped_with_the_session(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    ensure_embedded_default()  # a first-time build here, not inside the inner run's timeout
    pytester.makeini(INI_WARNINGS_ARE_ERRORS)
    pytester.makepyfile(test_ab=LLAMA_CASE)
    bench = tmp_path / "b.json"
    try:
        result = pytester.runpytest_subprocess(
            "--llm-candidate-server-option=threads=1", "--llm-ab-blocks=4", *unique_server_args(tmp_path),
            f"--benchmark-json={bench}", timeout=600,
        )  # fmt: skip
    finally:
        left = llama_servers_with(str(tmp_path))
        for proc in left:  # ours by the unique argument: clean up before failing
            proc.kill()
    assert left == [], "a llama-server outlived its session"
    text = result.stdout.str()
    assert text.count("server started for gemma3-270m@candidate (llamacpp, pid ") == 1
    assert text.count("server started for gemma3-270m (llamacpp, pid ") == 1
    llm = bench_entries(bench)["test_case[gemma3-270m]"]
    ab = llm["ab"]
    assert isinstance(ab, dict)
    base, cand = ab["sides"]["baseline"], ab["sides"]["candidate"]
    assert base["base_url"] != cand["base_url"]
    assert base["base_url"].startswith("http://127.0.0.1:")
    assert cand["base_url"].startswith("http://127.0.0.1:")
    assert cand["model"] == base["model"] == "gemma3-270m"  # the same model, served under its own name
    assert len(ab["blocks"]) == 4
    assert base["requests"] == cand["requests"] == llm["requests"] == 4
    # One outcome everywhere; on a real engine an A/A-like pair may pass or, on a busy machine, be
    # invalid, but it is never a regression of a candidate that only differs in its thread count 1.
    outcome = llm["outcome"]
    assert outcome in ("pass", "invalid"), llm["reasons"]
    result.assert_outcomes(**({"passed": 1} if outcome == "pass" else {"failed": 1}))

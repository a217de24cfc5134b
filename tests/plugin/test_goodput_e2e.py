"""Goodput as a user reads it: the JSON's figures are a hand computation from the request JSONL.

The deterministic server jitters TTFT and every gap (Gaussian, 4 ms, seeded),
so some requests meet the per-request limits and some do not; the test
recomputes which from the raw stamps in the JSONL, by the definition in the
README (completed, TTFT and E2E from when the request was due, TPOT), and
expects the JSON's numbers exactly. Live progress lines show on the terminal
during a long case, one per interval, and not under ``-q``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_support import bench_entries, request_lines

from pytest_llmperf.testing.harness import running_detserver

CASE = """
import pytest

@pytest.mark.llm_budget(slo_ttft_ms=24, slo_tpot_ms=2.3, slo_e2e_ms=60, error_rate_max=0)
def test_goodput(llm_perf):
    llm_perf.run(input_tokens=16, output_tokens=12, concurrency=2, requests=40, warmup=2)
"""


def test_goodput_is_the_hand_computation_from_the_request_log(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makepyfile(test_good=CASE)
    out, requests = tmp_path / "run.json", tmp_path / "requests"
    args = ("--jitter-ms", "4", "--seed", "11")
    with running_detserver(tmp_path / "det", ttft_ms=20, itl_ms=2, args=args, model="org/det") as server:
        result = pytester.runpytest_subprocess(
            "--llm-backend=openai", f"--llm-base-url={server.base_url}", "--llm-model=org/det",
            f"--benchmark-json={out}", f"--llm-save-requests={requests}", timeout=120,
        )  # fmt: skip
    result.assert_outcomes(passed=1)
    llm = bench_entries(out)["test_goodput[org/det]"]
    lines = [line for line in request_lines(requests) if not line["warmup"]]
    assert len(lines) == 40

    good = []
    for line in lines:
        due, first, end = line["scheduled_ns"], line["chunk_ns"][0], line["end_ns"]
        ttft_ms = (first - due) / 1e6
        e2e_ms = (end - due) / 1e6
        tpot_ms = (end - first) / (line["output_tokens"] - 1) / 1e6
        if line["error"] is None and ttft_ms <= 24 and tpot_ms <= 2.3 and e2e_ms <= 60:
            good.append(line)
    window_s = (max(line["end_ns"] for line in lines) - min(line["sent_ns"] for line in lines)) / 1e9
    # The limits bite: some requests are good and some are not.
    assert 0 < len(good) < 40
    assert llm["good_requests"] == len(good)
    assert llm["slo_attainment"] == len(good) / 40
    assert llm["goodput_rps"] == len(good) / window_s
    assert llm["goodput_tok_per_s"] == sum(line["output_tokens"] for line in good) / window_s
    assert llm["slo"] == {"ttft_ms": 24.0, "tpot_ms": 2.3, "e2e_ms": 60.0}


LONG = """
def test_long(llm_perf):
    llm_perf.run(input_tokens=8, output_tokens=8, concurrency=2, duration_s=17, warmup=0)
"""


@pytest.mark.parametrize("quiet", [False, True])
def test_a_long_case_shows_progress_lines_and_minus_q_keeps_it_quiet(
    pytester: pytest.Pytester, tmp_path: Path, quiet: bool
) -> None:
    pytester.makepyfile(test_long=LONG)
    with running_detserver(tmp_path / "det", ttft_ms=20, itl_ms=20, model="org/det") as server:
        result = pytester.runpytest_subprocess(
            "--llm-backend=openai", f"--llm-base-url={server.base_url}", "--llm-model=org/det",
            *(["-q"] if quiet else []), timeout=120,
        )  # fmt: skip
    result.assert_outcomes(passed=1)
    progress = [line for line in result.outlines if "requests done" in line]
    if quiet:
        assert progress == []
        return
    # Not a terminal here (a CI log): one line per 15 s, so one line in a 17 s case.
    assert len(progress) == 1, progress
    assert progress[0].startswith("[llmperf] test_long[org/det]: ")
    assert " (a 17 s run, cap 340) requests done, 2 in flight, " in progress[0]
    assert progress[0].endswith(" s in")

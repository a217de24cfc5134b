"""The examples' budgets bite: a healthy server passes them, a broken one fails them.

The examples run as a user runs them (the files themselves, through the
plugin), attached to the project's deterministic-latency server, because a
server that is slow on purpose is what this needs: a fast one (TTFT 100 ms,
5 ms per token), one with a broken prefill (TTFT 2.5 s) and one with a broken
decode (250 ms per token). The real embedded default meets the same budgets
in ``.ci/run``'s cold path, the README's first command.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pytest_llmperf.testing.harness import running_detserver

EXAMPLES = Path(__file__).parent.parent.parent / "examples"


def run_examples(pytester: pytest.Pytester, tmp_path: Path, *args: str, **det: float) -> pytest.RunResult:
    for name in ("test_input_tokens.py", "test_output_tokens.py"):
        shutil.copy(EXAMPLES / name, pytester.path / name)
    with running_detserver(tmp_path / "det", model="org/det", **det) as server:
        return pytester.runpytest_subprocess(
            "--llm-backend=openai", f"--llm-base-url={server.base_url}", "--llm-model=org/det",
            "-p", "no:randomly", *args, timeout=300,
        )  # fmt: skip


def test_a_fast_server_meets_every_examples_budget(pytester: pytest.Pytester, tmp_path: Path) -> None:
    result = run_examples(pytester, tmp_path, ttft_ms=100, itl_ms=5)
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == outcomes.get("errors", 0) == 0, result.stdout.str()[-3000:]
    # On a loaded 2-core machine our own client can fall behind: that case is INVALID (never a
    # pass, never hidden) for that reason alone, and no budget was missed.
    assert outcomes.get("passed", 0) + outcomes.get("invalid", 0) == 15
    for line in result.outlines:
        if ": invalid: " in line:
            assert "client saturated, event-loop lag p99" in line, line


def test_a_server_with_a_broken_prefill_fails_the_ttft_budget(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    result = run_examples(pytester, tmp_path, "-k", "test_input_tokens and 64-1", ttft_ms=2500, itl_ms=10)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*fail-budget: ttft_ms p50 = 25*ms exceeds budget 1000 ms*"])


def test_a_server_with_a_broken_decode_fails_the_tpot_budget(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    result = run_examples(pytester, tmp_path, "-k", "test_output_tokens and 16-1", ttft_ms=60, itl_ms=250)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*fail-budget: tpot_ms p50 = 25*ms exceeds budget 200 ms*"])

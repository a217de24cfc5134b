"""Gating as a CI job sees it: budgets, baseline regressions and reports, through the plugin.

The server here is the project's deterministic-latency server, attached
through the ``openai`` backend. It is a measuring instrument with known
truth (TTFT 40 ms, ITL 10 ms, or ITL x 1.1 for the "slower release"), which
is what a gate-quality test needs; the real engines are exercised in
test_plugin_e2e.py and tests/integration.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pytest_llmperf.testing.harness import running_detserver

CASE = """
import pytest

@pytest.mark.llm_budget({budget})
def test_case(llm_perf):
    llm_perf.run(input_tokens=32, output_tokens=32, concurrency=4, requests=24, warmup=2)
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


def test_a_met_budget_passes_and_a_missed_one_fails_naming_the_metric(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makepyfile(test_met=CASE.format(budget="ttft_ms_p95=400, tpot_ms_p50=30, error_rate_max=0"))
    pytester.makepyfile(test_missed=CASE.format(budget="tpot_ms_p50=5"))
    with detserver(tmp_path, "budget") as url:
        result = run(pytester, url)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*test_missed.py::test_case*", "*fail-budget: tpot_ms p50 = 1*ms exceeds budget 5 ms*"]
    )


def test_one_baseline_run_says_its_spread_is_unknown_and_fails_only_a_large_slowdown(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makepyfile(test_gate=CASE.format(budget=""))
    storage = f"--benchmark-storage=file://{tmp_path}/store"
    with detserver(tmp_path, "release-1") as url:
        run(pytester, url, "--benchmark-autosave", storage).assert_outcomes(passed=1)
        unchanged = run(pytester, url, "--benchmark-compare=0001", storage)
    unchanged.assert_outcomes(passed=1)
    unchanged.stdout.fnmatch_lines(
        ["note: test_gate.py::test_case*: one baseline run: the spread between runs is unknown*"]
    )

    # +10% is within what unchanged sessions move on a CPU box: with one run it passes, and says why.
    with detserver(tmp_path, "release-2", itl_scale=1.1) as url:
        slower = run(pytester, url, "--benchmark-compare=0001", storage)
    slower.assert_outcomes(passed=1)

    with detserver(tmp_path, "release-3", itl_scale=1.5) as url:
        much_slower = run(
            pytester, url, "--benchmark-compare=0001", storage, "--llm-report", str(tmp_path / "report")
        )
    much_slower.assert_outcomes(failed=1)
    much_slower.stdout.fnmatch_lines(
        ["*fail-regression: tpot_ms +*% vs one baseline run (95% CI*the bar is +25.0%, not the tolerance*"]
    )
    summary = (tmp_path / "report" / "llmperf-summary.md").read_text()
    assert "fail-regression" in summary
    assert "tpot_ms" in summary


def test_report_writes_markdown_and_plots_from_real_runs(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyfile(
        test_curves="""
        import pytest

        @pytest.mark.parametrize("concurrency", [1, 4])
        @pytest.mark.parametrize("output_tokens", [8, 32])
        def test_out(llm_perf, output_tokens, concurrency):
            llm_perf.run(input_tokens=16, output_tokens=output_tokens, concurrency=concurrency, requests=8)

        @pytest.mark.parametrize("input_tokens", [16, 64])
        def test_in(llm_perf, input_tokens):
            llm_perf.run(input_tokens=input_tokens, output_tokens=8, concurrency=2, requests=6)
        """
    )
    report = tmp_path / "report"
    with detserver(tmp_path, "curves") as url:
        result = run(pytester, url, f"--llm-report={report}", f"--junitxml={tmp_path / 'junit.xml'}")
    result.assert_outcomes(passed=6)
    pngs = sorted(p.name for p in report.glob("*.png"))
    assert len(pngs) == 3, pngs
    for png in report.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 10_000  # drawn curves, not an empty canvas
    markdown = (report / "llmperf-summary.md").read_text()
    assert "### org/det (openai)" in markdown
    assert markdown.count("| `test_") == 6
    junit = (tmp_path / "junit.xml").read_text()
    assert junit.count('<property name="llm_ttft_ms_p50"') == 6
    assert junit.count('<property name="llm_output_tok_per_s"') == 6

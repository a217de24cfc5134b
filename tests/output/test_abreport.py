"""A/B cases in the report: the Markdown table and the per-block plot."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_llmperf.judge.paired import Block, ab_info, judge_blocks
from pytest_llmperf.output.abreport import ab_tables, write_ab_plots
from pytest_llmperf.output.report import ReportRow, plots_available


def row(drift: list[float], ratios: list[float], dropped: int | None = None) -> ReportRow:
    blocks = [
        Block(i, "AB" if i % 2 == 0 else "BA", {"tpot_ms": 50 * d}, {"tpot_ms": 50 * d * r},
              dropped="machine busy" if i == dropped else None, started_s=10.0 * i)
        for i, (d, r) in enumerate(zip(drift, ratios, strict=True))
    ]  # fmt: skip
    verdict = judge_blocks(blocks, comparisons=1)
    llm = {"model": "m", "backend": "openai", "input_tokens": 8, "output_tokens": 4, "concurrency": 1,
           "requests": 8, "outcome": "pass", "ab": ab_info(verdict, blocks, {})}  # fmt: skip
    return ReportRow.from_llm("t.py::test_a[m]", llm)


def test_the_markdown_lists_each_ab_case_with_its_verdict_and_resolution() -> None:
    r = row([1.0, 1.1, 1.2, 1.3, 1.3, 1.2], [1.0, 1.01, 0.99, 1.0, 1.0, 1.0], dropped=5)
    lines = ab_tables([r])
    assert lines[0] == "### A/B: candidate vs baseline, interleaved"
    (case,) = [line for line in lines if line.startswith("| `test_a[m]`")]
    assert "A/B pass: candidate tpot_ms -0.0% (95% CI -0.9%..+0.9%) over 5 blocks" in case
    assert "| 5 | 1 | 3.0% |" in case  # 5 valid blocks, 1 dropped, fails from the 3% tolerance
    assert ab_tables([ReportRow.from_llm("t.py::test_b[m]", {"model": "m"})]) == []


@pytest.mark.skipif(not plots_available(), reason="matplotlib is the plots extra")
def test_each_ab_case_gets_a_plot_of_its_blocks(tmp_path: Path) -> None:
    r = row([1.0, 1.1, 1.2, 1.3], [1.05, 1.05, 1.06, 1.04])
    (path,) = write_ab_plots(tmp_path, [r])
    assert path.name == "ab-test_a_m.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""Reports: rows from results, the terminal table, Markdown, JUnit properties and PNG plots."""

from __future__ import annotations

import dataclasses
import sys
import warnings
from pathlib import Path

import pytest

from pytest_llmperf.output.report import (
    MARKDOWN_NAME,
    PLOT_NAMES,
    ReportRow,
    headline,
    junit_properties,
    plots_available,
    render_markdown,
    terminal_table,
    write_markdown,
    write_plots,
)
from pytest_llmperf.records import Distribution, Outcome, RunResult, Scenario, Summary

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def dist(p50: float, p95: float) -> Distribution:
    return Distribution(16, p50, 1.0, p50 / 2, p95 * 1.1, p50, p95, p95, p95 * 1.05)


def result(
    inp: int = 128, out: int = 64, c: int = 1, *, model: str = "gemma3-270m", rate: float | None = None
) -> RunResult:
    ttft = 500.0 + 2 * inp + 100 * (c - 1)
    tpot = 30.0 + 10 * (c - 1)
    e2e = ttft + tpot * (out - 1)
    summary = Summary(
        requests=16,
        completed=16,
        errors=0,
        duration_s=4.0,
        ttft_ms=dist(ttft, ttft * 1.25),
        itl_ms=dist(tpot, tpot * 1.2),
        tpot_ms=dist(tpot, tpot * 1.1),
        e2e_ms=dist(e2e, e2e * 1.1),
        queue_ms=None,
        request_per_s=c / (e2e / 1000),
        output_tok_per_s=c * out / (e2e / 1000),
        total_tok_per_s=c * (inp + out) / (e2e / 1000),
        error_rate=0.0,
        input_tokens_mean=float(inp),
        output_tokens_mean=float(out),
        output_length_misses=0,
    )
    return RunResult(model, "llamacpp", Scenario(inp, out, c, 16, rate=rate), (), summary)


FAIL = Outcome("fail-budget", ("ttft_ms p95 = 812 ms exceeds budget 500 ms (marker)", "second reason"))


def test_row_from_result_and_outcome() -> None:
    row = ReportRow.from_result("examples/test_out.py::test_out[gemma3-270m-64-1]", result(), FAIL)
    assert row == ReportRow(
        nodeid="examples/test_out.py::test_out[gemma3-270m-64-1]",
        model="gemma3-270m",
        backend="llamacpp",
        scenario="in128-out64-c1",
        input_tokens=128,
        output_tokens=64,
        concurrency=1,
        rate=None,
        requests=16,
        ttft_ms_p50=756.0,
        ttft_ms_p95=945.0,
        tpot_ms_p50=30.0,
        e2e_ms_p50=2646.0,
        e2e_ms_p95=pytest.approx(2910.6),  # type: ignore[arg-type]
        output_tok_per_s=pytest.approx(64 / 2.646),  # type: ignore[arg-type]
        total_tok_per_s=pytest.approx(192 / 2.646),  # type: ignore[arg-type]
        error_rate=0.0,
        outcome="fail-budget",
        reason="ttft_ms p95 = 812 ms exceeds budget 500 ms (marker)",
    )
    assert row.test == "test_out[gemma3-270m-64-1]"
    unjudged = ReportRow.from_result("", result())
    assert (unjudged.outcome, unjudged.reason, unjudged.test) == ("", "", "in128-out64-c1")


def rows() -> list[ReportRow]:
    return [
        ReportRow.from_result("t.py::test_a[x-1]", result(c=1), Outcome("pass")),
        ReportRow.from_result("t.py::test_a[x-4]", result(c=4), FAIL),
        ReportRow.from_result("t.py::test_b", result(model="a-model", out=16), Outcome("pass")),
    ]


def test_terminal_table_groups_by_model_and_lists_reasons() -> None:
    expected = """\
model        test         case            TTFT p50 ms  TTFT p95 ms  TPOT p50 ms  out tok/s  errors  outcome
-----------  -----------  --------------  -----------  -----------  -----------  ---------  ------  -----------
a-model      test_b       in128-out16-c1        756.0        945.0         30.0       13.3      0%  pass
gemma3-270m  test_a[x-1]  in128-out64-c1        756.0        945.0         30.0       24.2      0%  pass
gemma3-270m  test_a[x-4]  in128-out64-c4         1056         1320         60.0       52.9      0%  fail-budget
t.py::test_a[x-4]: fail-budget: ttft_ms p95 = 812 ms exceeds budget 500 ms (marker)"""  # noqa: E501
    assert terminal_table(rows()) == expected


def test_markdown_summary_for_a_ci_job() -> None:
    text = render_markdown(rows())
    assert text.splitlines()[0] == "## LLM performance: 3 tests: 1 failed, 2 passed (1 fail-budget)"
    assert "### gemma3-270m (llamacpp)" in text
    assert "### a-model (llamacpp)" in text
    assert (
        "| `test_a[x-4]` | in128-out64-c4 | 1056 | 1320 | 60.0 | 4836 | 52.9 | - | - | 0% | ❌ fail-budget |"
    ) in text.splitlines()
    assert text.endswith(
        "### Failures\n\n"
        "- `t.py::test_a[x-4]`: **fail-budget**: ttft_ms p95 = 812 ms exceeds budget 500 ms (marker)\n"
    )


def test_markdown_escapes_pipes_and_writes_the_file(tmp_path: Path) -> None:
    odd = dataclasses.replace(rows()[1], reason="a | b\nc")
    assert "a \\| b c" in render_markdown([odd])
    path = write_markdown(tmp_path / "report", rows())
    assert path == tmp_path / "report" / MARKDOWN_NAME
    assert path.read_text("utf-8") == render_markdown(rows())


def test_junit_properties() -> None:
    assert junit_properties(result(c=4), FAIL) == [
        ("llm_model", "gemma3-270m"),
        ("llm_backend", "llamacpp"),
        ("llm_scenario", "in128-out64-c4"),
        ("llm_input_tokens", 128),
        ("llm_output_tokens", 64),
        ("llm_concurrency", 4),
        ("llm_requests", 16),
        ("llm_ttft_ms_p50", 1056.0),
        ("llm_ttft_ms_p95", 1320.0),
        ("llm_tpot_ms_p50", 60.0),
        ("llm_e2e_ms_p50", 4836.0),
        ("llm_output_tok_per_s", 52.936),
        ("llm_error_rate", 0.0),
        ("llm_outcome", "fail-budget"),
        ("llm_reason", "ttft_ms p95 = 812 ms exceeds budget 500 ms (marker)"),
        ("llm_reason", "second reason"),
    ]


def test_junit_properties_leave_out_undefined_figures() -> None:
    base = result()
    empty = dataclasses.replace(
        base, summary=dataclasses.replace(base.summary, tpot_ms=None, output_tok_per_s=None)
    )
    names = [name for name, _ in junit_properties(empty, None)]
    assert "llm_tpot_ms_p50" not in names
    assert "llm_output_tok_per_s" not in names
    assert "llm_outcome" not in names


def grid() -> list[RunResult]:
    out = [result(128, o, c) for o in (16, 64) for c in (1, 4)]
    out += [result(i, 16, 1) for i in (512, 1024)]
    out.append(result(128, 16, 8, rate=2.0))  # open loop: not plotted
    return out


def test_write_plots_draws_the_three_curves(tmp_path: Path) -> None:
    written = write_plots(tmp_path, grid())
    assert written == [tmp_path / name for name in PLOT_NAMES]
    for path in written:
        assert path.read_bytes()[:8] == PNG_MAGIC
        assert path.stat().st_size > 10_000  # axes, labels and lines, not an empty canvas


def test_a_chart_without_a_two_point_line_is_skipped(tmp_path: Path) -> None:
    # Only concurrency varies: no output-length or input-length curve exists.
    written = write_plots(tmp_path, [result(c=c) for c in (1, 2, 4)])
    assert written == [tmp_path / "output_tok_per_s_vs_concurrency.png"]
    assert write_plots(tmp_path / "none", [result(rate=1.0), result(c=2, rate=1.0)]) == []


def test_rows_plot_like_results(tmp_path: Path) -> None:
    from_rows = write_plots(tmp_path, [ReportRow.from_result("", r) for r in grid()])
    assert [p.name for p in from_rows] == list(PLOT_NAMES)


def test_missing_matplotlib_draws_nothing_and_warns_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    assert not plots_available()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert write_plots(tmp_path, grid()) == []
    assert list(tmp_path.iterdir()) == []


def test_the_headline_counts_like_pytest_and_names_each_kind() -> None:
    kinds = ["pass", "fail", "fail-budget", "error", "skip", "invalid", "fail"]
    many = [dataclasses.replace(rows()[0], outcome=kind) for kind in kinds]
    assert headline(many) == (
        "7 tests: 3 failed, 1 invalid, 1 passed, 1 skipped, 1 error "
        "(1 fail-budget, 1 invalid, 2 fail, 1 error, 1 skip)"
    )
    assert headline(many[:1]) == "1 test: 1 passed"


def test_a_test_that_measured_nothing_has_a_row_without_figures() -> None:
    row = ReportRow.unmeasured(
        "t.py::test_x[m]", "m", "llamacpp", Outcome("error", ("llama-server for m could not start",))
    )
    table = terminal_table([row])
    assert table.splitlines()[2].split() == ["m", "test_x[m]", "-", "-", "-", "-", "-", "-", "error"]
    assert table.splitlines()[3] == "t.py::test_x[m]: error: llama-server for m could not start"
    assert "| `test_x[m]` | - | - | - | - | - | - | - | - | - | ⛔ error |" in render_markdown([row])

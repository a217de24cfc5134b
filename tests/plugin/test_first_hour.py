"""What a new user meets in the first hour (issue 12): reports, the terminal, attaching.

The server is our detserver, attached through the ``openai`` backend: these
tests are about what the plugin prints and writes, not about an engine. Inner
projects run with ``filterwarnings = error``, as the README's users do.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_support import INI_WARNINGS_ARE_ERRORS, attach_args, bench_entries

from pytest_llmperf.testing.harness import running_detserver

ONE = """
def test_one(llm_perf):
    llm_perf.run(input_tokens=17, output_tokens=4, requests=3)
"""

# matplotlib cannot be imported in this session, as after `pip install 'pytest-llmperf[cpu]'`.
NO_MATPLOTLIB = """
import sys

class NoMatplotlib:
    def find_spec(self, name, path=None, target=None):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r} (hidden by the test)")
        return None

sys.meta_path.insert(0, NoMatplotlib())
"""


def test_report_without_matplotlib_writes_the_markdown_and_says_how_to_get_plots(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    report = tmp_path / "report"
    pytester.makeini(INI_WARNINGS_ARE_ERRORS)
    pytester.makeconftest(NO_MATPLOTLIB)
    pytester.makepyfile(test_one=ONE)
    with running_detserver(tmp_path / "server", model="org/det", ttft_ms=5, itl_ms=2) as server:
        result = pytester.runpytest_subprocess(*attach_args(server), f"--llm-report={report}", timeout=120)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.assert_outcomes(passed=1)
    assert (report / "llmperf-summary.md").read_text().startswith("## LLM performance: 1 test: 1 passed")
    assert list(report.glob("*.png")) == []
    result.stdout.fnmatch_lines(
        [
            "*no plots in *report: matplotlib is not installed; "
            "pip install 'pytest-llmperf[[]plots[]]' to get them"
        ]
    )
    text = result.stdout.str() + result.stderr.str()
    assert text.count("matplotlib is not installed") == 1
    assert "Traceback" not in text
    assert "Warning" not in text


def test_the_terminal_shows_the_llm_table_and_the_benchmark_table_only_when_asked(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makeini(INI_WARNINGS_ARE_ERRORS)
    pytester.makepyfile(test_one=ONE)
    with running_detserver(tmp_path / "server", model="org/det", ttft_ms=5, itl_ms=2) as server:
        default = pytester.runpytest_subprocess(*attach_args(server), timeout=120)
        asked = pytester.runpytest_subprocess(
            *attach_args(server), "--benchmark-columns=min,median,max", timeout=120
        )
    default.assert_outcomes(passed=1)
    default.stdout.fnmatch_lines(["*llmperf summary*", "model*test*TTFT p50 ms*"])
    assert "benchmark: 1 tests" not in default.stdout.str()
    asked.assert_outcomes(passed=1)
    asked.stdout.fnmatch_lines(["*benchmark: 1 tests*", "Name (time in ms)*Min*Median*Max*"])
    asked.stdout.fnmatch_lines(["*llmperf summary*"])


def test_an_endpoint_serving_another_name_is_told_how_to_select_it(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    bench = tmp_path / "bench.json"
    pytester.makeini(INI_WARNINGS_ARE_ERRORS)
    pytester.makepyfile(test_one=ONE)
    with running_detserver(tmp_path / "server", model="my-served-model", ttft_ms=5, itl_ms=2) as server:
        # The default model is not what the endpoint serves: the error names both ways to fix it.
        wrong = pytester.runpytest_subprocess(
            "--llm-backend=openai", f"--llm-base-url={server.base_url}", timeout=120
        )
        # An unknown name is the served name for an endpoint: results carry it.
        right = pytester.runpytest_subprocess(
            "--llm-backend=openai", f"--llm-base-url={server.base_url}", "--llm-model=my-served-model",
            f"--benchmark-json={bench}", timeout=120,
        )  # fmt: skip
    wrong.assert_outcomes(errors=1)
    wrong.stdout.fnmatch_lines(
        [
            f"*the endpoint at {server.base_url} serves my-served-model, not 'gemma3-270m': "
            "select it with --llm-model my-served-model (or keep the name and add "
            "--llm-server-option model=my-served-model)*"
        ]
    )
    right.assert_outcomes(passed=1)
    llm = bench_entries(bench)["test_one[my-served-model]"]
    assert (llm["model"], llm["backend"], llm["completed"]) == ("my-served-model", "openai", 3)

"""``llm_perf.run`` refuses what it cannot measure, before any request (issue 11, case 4).

Each impossible argument fails its test with one line naming the argument, the
value and what to do, without a traceback, and the server receives nothing (not
even a prompt-calibration probe): our detserver logs every request it serves,
so an empty log proves it. The inner project runs with ``filterwarnings =
error``, so a pytest-benchmark warning about an unused fixture would show.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_support import INI_WARNINGS_ARE_ERRORS, attach_args

from pytest_llmperf.testing.harness import running_detserver

# call, the failure line (fnmatch pattern)
BAD_CALLS: dict[str, tuple[str, str]] = {
    "no_requests": (
        "requests=0",
        "llm_perf.run(requests=0): requests must be a whole number >= 1; ask for at least one request",
    ),
    "zero_timeout": (
        "timeout_s=0",
        "llm_perf.run(timeout_s=0): timeout_s must be a number of seconds > 0*",
    ),
    "negative_rate": (
        "rate=-1",
        "llm_perf.run(rate=-1): rate must be a number of requests per second > 0*",
    ),
    "nan_rate": (
        "rate=float('nan')",
        "llm_perf.run(rate=nan): rate must be a number of requests per second > 0*",
    ),
    "zero_input": (
        "input_tokens=0",
        "llm_perf.run(input_tokens=0): input_tokens must be a whole number >= 1*",
    ),
    "negative_output": (
        "output_tokens=-1",
        "llm_perf.run(output_tokens=-1): output_tokens must be a whole number >= 1*",
    ),
    "text_input": (
        "input_tokens='64'",
        "llm_perf.run(input_tokens='64'): input_tokens must be a whole number >= 1*",
    ),
    "fraction_concurrency": (
        "concurrency=2.5",
        "llm_perf.run(concurrency=2.5): concurrency must be a whole number >= 1*",
    ),
    "fewer_requests_than_concurrency": (
        "concurrency=8, requests=4",
        "llm_perf.run(concurrency=8, requests=4): 4 requests can never have 8 in flight; "
        "ask for requests >= 8, or concurrency <= 4",
    ),
    "beyond_open_files": (
        "concurrency=100000",
        "llm_perf.run(concurrency=100000): * open files*",
    ),
    "negative_warmup": ("warmup=-1", "llm_perf.run(warmup=-1): warmup must be a whole number >= 0*"),
    "unknown_arrival": ("arrival='burst'", "llm_perf.run(arrival='burst'): use 'poisson' or 'constant'"),
}


def full_call(call: str) -> str:
    """The call with the lengths it does not name: every test sends 17-token prompts otherwise."""
    given = {part.split("=")[0].strip() for part in call.split(",")}
    defaults = [f"{k}={v}" for k, v in (("input_tokens", 17), ("output_tokens", 4)) if k not in given]
    return ", ".join([*defaults, call])


TESTS = "\n".join(
    f"def test_{name}(llm_perf):\n    llm_perf.run({full_call(call)})\n"
    for name, (call, _line) in BAD_CALLS.items()
)


def test_impossible_arguments_fail_at_once_with_one_line_and_send_nothing(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makeini(INI_WARNINGS_ARE_ERRORS)
    pytester.makepyfile(test_bad=TESTS)
    with running_detserver(tmp_path / "server", model="org/det", args=("--log-prompts",)) as server:
        result = pytester.runpytest_subprocess(
            *attach_args(server), "-p", "no:randomly", f"--benchmark-json={tmp_path / 'b.json'}", timeout=120
        )
        served = server.stamp_log.read_text() if server.stamp_log.exists() else ""
    result.assert_outcomes(failed=len(BAD_CALLS))
    assert served == ""  # not one request, probe or warm-up reached the server
    text = result.stdout.str()
    for _call, line in BAD_CALLS.values():
        result.stdout.fnmatch_lines([f"*{line}"])
    assert "Traceback" not in text
    assert "perf.py" not in text
    assert "pytest_llmperf/perf/" not in text
    assert "Warning" not in text + result.stderr.str()


def test_a_marker_with_a_bad_argument_is_a_usage_error_at_collection(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_marker="""
        import pytest

        @pytest.mark.llm_models(3)
        def test_x(llm_perf):
            llm_perf.run(input_tokens=16, output_tokens=4, requests=2)
        """
    )
    result = pytester.runpytest_subprocess(timeout=60)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: llm_models of test_marker.py::test_x takes model names, got 3; write e.g. *llm_models(*"]
    )

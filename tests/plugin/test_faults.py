"""Server faults as a user sees them: every failed request is an error with its reason.

The server here is our detserver (``pytest_llmperf.testing.detserver``), attached
through the ``openai`` backend (and the ``ollama`` one for NDJSON) exactly as a
user attaches to a running endpoint. It is a measuring instrument with known
truth, used because llama-server cannot be made to answer HTTP 500, break its
SSE, cut a stream short, ignore ``max_tokens``, hang or crawl on purpose.

The truth: with ``--fault-every 4`` the server spoils every request whose
arrival number is 3 mod 4, so any 8 consecutive requests hold exactly 2 faulty
ones. Each inner test sends exactly 8 measured requests and no warm-up, and no
other generation request reaches the server meanwhile; the prompt-calibration
probes before them are non-streamed (so ``malformed``, ``truncate``,
``ignore-max-tokens`` and ``slow`` cannot touch them) and are the first two
arrivals, which ``http500`` and ``hang`` spare. Every run therefore has
``errors == 2`` and ``error_rate == 0.25``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from reliability_support import attach_args, bench_entries, request_lines

from pytest_llmperf.testing.harness import running_detserver

ONE_RUN = """
import pytest

@pytest.mark.llm_budget(error_rate_max=0)
def test_run(llm_perf):
    llm_perf.run(input_tokens=17, output_tokens=8, concurrency={concurrency}, requests=8, warmup=0)
"""

# fault, backend, served model, the error every faulty request must carry
FAULTS = [
    ("http500", "openai", "org/det", r"^HTTP 500: detserver: injected fault http500$"),
    ("malformed", "openai", "org/det", r"^malformed SSE event #\d+: "),
    ("malformed", "ollama", "det:latest", r"^malformed NDJSON line #\d+: "),
    ("truncate", "openai", "org/det", r"^stream truncated: no \[DONE\] after 4 content chunks"),
    (
        "ignore-max-tokens",
        "openai",
        "org/det",
        r"^output longer than max_tokens: server sent 10 tokens, 8 were asked for$",
    ),
]


def run_against(
    pytester: pytest.Pytester, tmp_path: Path, *, fault: str, backend: str, model: str, concurrency: int,
    extra_server_args: tuple[str, ...] = (), options: tuple[str, ...] = (),
) -> tuple[pytest.RunResult, Path, Path]:  # fmt: skip
    bench, requests = tmp_path / "bench.json", tmp_path / "requests"
    pytester.makepyfile(test_run=ONE_RUN.format(concurrency=concurrency))
    with running_detserver(
        tmp_path / "server", model=model, ttft_ms=5, itl_ms=2, fault=fault,
        args=("--fault-every", "4", *extra_server_args),
    ) as server:  # fmt: skip
        result = pytester.runpytest_subprocess(
            *attach_args(server, backend=backend),
            f"--benchmark-json={bench}",
            f"--llm-save-requests={requests}",
            *options,
            timeout=120,  # the suite must never hang: a hang fails this test instead
        )
    return result, bench, requests


@pytest.mark.parametrize("case", FAULTS, ids=[f"{f[0]}-{f[1]}" for f in FAULTS])
def test_faulty_responses_are_errors_with_their_message(
    pytester: pytest.Pytester, tmp_path: Path, case: tuple[str, str, str, str]
) -> None:
    fault, backend, model, error = case
    result, bench, requests = run_against(
        pytester, tmp_path, fault=fault, backend=backend, model=model, concurrency=2
    )

    # Above its error-rate budget, the run fails, and says which budget and the first error.
    result.assert_outcomes(failed=1)
    reason = (
        f"2 of 8 requests failed (error_rate 0.25 > error_rate_max 0, llm_budget of "
        f"test_run.py::test_run[{model}]); first: "
    )
    result.stdout.fnmatch_lines([f"*test_run*{model}*fail-budget: {reason.replace('[', '[[]')}*"])

    # The benchmark JSON counts the errors...
    llm = bench_entries(bench)[f"test_run[{model}]"]
    assert (llm["requests"], llm["completed"], llm["errors"], llm["error_rate"]) == (8, 6, 2, 0.25)
    assert llm["outcome"] == "fail-budget"
    assert len(llm["reasons"]) == 1
    assert llm["reasons"][0].startswith(reason)
    assert re.search(error, llm["reasons"][0].split("; first: ", 1)[1]), llm["reasons"]
    # ...and its latency figures come from the good requests only.
    assert llm["output_tokens_mean"] == 8
    assert len(llm["samples"]["e2e_ms"]) == 6

    # The request log says which requests failed, and why.
    lines = request_lines(requests)
    assert len(lines) == 8
    assert not any(line["warmup"] for line in lines)
    failed = [line for line in lines if line["error"] is not None]
    assert len(failed) == 2, [line["error"] for line in lines]
    for line in failed:
        assert re.search(error, line["error"]), line["error"]
    for line in lines:
        if line["error"] is None:
            assert line["output_tokens"] == 8
            assert sum(line["chunk_tokens"]) == 8


@pytest.mark.parametrize("fault", ["hang", "slow"])
def test_requests_past_the_request_timeout_are_errors_and_nothing_hangs(
    pytester: pytest.Pytester, tmp_path: Path, fault: str
) -> None:
    # hang: the server reads the request and never answers. slow: it streams one token a
    # second, so 8 tokens would take 8 s. Both must end at --llm-request-timeout=1.
    started = time.monotonic()
    result, bench, requests = run_against(
        pytester, tmp_path, fault=fault, backend="openai", model="org/det", concurrency=1,
        extra_server_args=("--slow-itl-ms", "1000"), options=("--llm-request-timeout=1",),
    )  # fmt: skip
    elapsed = time.monotonic() - started

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*fail-budget: 2 of 8 requests failed (error_rate 0.25 > error_rate_max 0, *"]
    )
    llm = bench_entries(bench)["test_run[org/det]"]
    assert (llm["completed"], llm["errors"], llm["error_rate"]) == (6, 2, 0.25)

    timed_out = [line for line in request_lines(requests) if line["error"] is not None]
    assert [line["error"] for line in timed_out] == ["timeout after 1 s"] * 2
    for line in timed_out:
        # Cut off at the deadline, not whenever the server would have finished (8 s for slow).
        # The deadline counts from before connecting and the loop's clock has 1 ms steps.
        assert 0.95 <= (line["end_ns"] - line["sent_ns"]) / 1e9 < 1.8
        if fault == "slow":
            assert line["status"] == 200  # it was streaming...
            assert 1 <= len(line["chunk_ns"]) < 8  # ...and got part of the answer
        else:
            assert line["status"] is None  # not a byte came back
            assert line["chunk_ns"] == []
    # Two 1-s timeouts in a row (concurrency 1) plus start-up; far below the 16 s a slow server needs.
    assert elapsed < 30

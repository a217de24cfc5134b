"""The server serves the load the test asked for (issue 11, "The server serves the load").

Servers are sized at collection from parameters *named* ``concurrency``,
``input_tokens`` and ``output_tokens``; a run whose literal arguments need more
slots or context restarts the server it started, with a line saying so, or fails
before sending with a sentence naming the option that fixes it. Everything here
runs the real embedded default (llama-server, Gemma 3 270M) and reads what the
server itself reports: its ``/metrics`` gauge of requests in flight, its own
error body for a request too long for it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_support import (
    INI_WARNINGS_ARE_ERRORS,
    bench_entries,
    ensure_embedded_default,
    llama_servers_with,
    unique_server_args,
)


@pytest.fixture(scope="module", autouse=True)
def _embedded_default() -> None:
    ensure_embedded_default()


@pytest.fixture
def marker(tmp_path: Path) -> str:
    return str(tmp_path)


# The poller reads llm_server.base_url on every turn: run() may restart the server, and the
# fixture's value follows it to the new one.
LITERALS = """
import threading, time, urllib.request
from pathlib import Path

def in_flight(server, stop, seen):
    while not stop.is_set():
        try:
            with urllib.request.urlopen(server.base_url + "/metrics", timeout=2) as answer:
                text = answer.read().decode()
        except OSError:
            time.sleep(0.05)
            continue
        seen += [float(line.split()[-1]) for line in text.splitlines()
                 if line.startswith("llamacpp:requests_processing")]
        time.sleep(0.02)

def test_eight_in_flight(llm_perf, llm_server):
    stop, seen = threading.Event(), []
    poller = threading.Thread(target=in_flight, args=(llm_server, stop, seen), daemon=True)
    poller.start()
    try:
        llm_perf.run(input_tokens=16, output_tokens=48, concurrency=8, requests=8, warmup=0)
    finally:
        stop.set()
        poller.join()
    Path({seen_file!r}).write_text(str(max(seen)))

def test_long_prompt(llm_perf):
    result = llm_perf.run(input_tokens=3000, output_tokens=4, requests=2, warmup=0)
    assert result.summary.completed == 2

def test_beyond_the_model(llm_perf):
    llm_perf.run(input_tokens=40000, output_tokens=4, requests=2)
"""


def test_literal_arguments_get_a_server_sized_for_them(
    pytester: pytest.Pytester, tmp_path: Path, marker: str
) -> None:
    seen_file, bench = tmp_path / "seen.txt", tmp_path / "bench.json"
    pytester.makeini(INI_WARNINGS_ARE_ERRORS)
    pytester.makepyfile(test_sizes=LITERALS.format(seen_file=str(seen_file)))
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", f"--benchmark-json={bench}", *unique_server_args(tmp_path), timeout=600
    )
    result.assert_outcomes(passed=2, failed=1)

    # concurrency=8 written as a literal: the server was restarted with 8 slots, and its own
    # gauge saw 8 requests in flight at once.
    result.stdout.fnmatch_lines(["*restarting llama-server for gemma3-270m with 8 slots (was 4)*"])
    assert float(seen_file.read_text()) == 8
    # input_tokens=3000: restarted again, with room for the long prompt, which then completed.
    result.stdout.fnmatch_lines(
        ["*restarting llama-server for gemma3-270m with room for 3004 tokens per slot (was 2112)*"]
    )
    entries = bench_entries(bench)
    assert entries["test_long_prompt[gemma3-270m]"]["input_tokens_mean"] == 3000
    assert entries["test_eight_in_flight[gemma3-270m]"]["concurrency"] == 8
    # Beyond the model's own context: one line, no restart, nothing sent.
    result.stdout.fnmatch_lines(
        [
            "*llm_perf.run(input_tokens=40000, output_tokens=4): needs 40004 tokens of context, beyond "
            "the 32768 of gemma3-270m; ask for fewer tokens*"
        ]
    )
    assert "test_beyond_the_model[gemma3-270m]" not in entries
    assert result.stdout.str().count("restarting llama-server") == 2
    assert "Traceback" not in result.stdout.str()
    assert llama_servers_with(marker) == []  # every server of every restart was stopped


PINNED = """
def test_more_than_the_pinned_slots(llm_perf):
    llm_perf.run(input_tokens=16, output_tokens=4, concurrency=4, requests=4)

def test_longer_than_the_server_allows(llm_perf):
    llm_perf.run(input_tokens=300, output_tokens=4, requests=2, warmup=0)
"""


def test_sizes_the_user_pinned_are_named_and_a_rejected_request_carries_the_servers_message(
    pytester: pytest.Pytester, tmp_path: Path, marker: str
) -> None:
    bench = tmp_path / "bench.json"
    pytester.makeini(INI_WARNINGS_ARE_ERRORS)
    pytester.makepyfile(test_pinned=PINNED)
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", f"--benchmark-json={bench}", "--llm-max-concurrency=2",
        # The user's own -c wins over ours in llama-server: 256 tokens per slot.
        "--llm-server-arg=-c", "--llm-server-arg=256", *unique_server_args(tmp_path), timeout=300,
    )  # fmt: skip
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*llm_perf.run(concurrency=4): needs 4 server slots, but --llm-max-concurrency=2 fixes the "
            "server at 2; raise it or drop it*"
        ]
    )
    entries = bench_entries(bench)
    assert "test_more_than_the_pinned_slots[gemma3-270m]" not in entries  # refused before sending
    long = entries["test_longer_than_the_server_allows[gemma3-270m]"]
    assert (long["completed"], long["errors"]) == (0, 2)
    result.stdout.fnmatch_lines(
        [
            "*2 of 2 requests failed (*); first: HTTP 400: request (30? tokens) exceeds the available "
            "context size (256 tokens), try increasing it*"
        ]
    )
    assert "restarting" not in result.stdout.str()
    assert llama_servers_with(marker) == []

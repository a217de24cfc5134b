"""No prompt is sent twice: across the tests of a session, and across sessions (issue 11, case 3).

A server with prefix caching serves a prompt it has seen from cache, which
flatters TTFT; so each test's prompts are drawn from a per-session salt mixed
with its node id. The check reads the prompts the server received (our
detserver's log with ``--log-prompts``), not our RNG: every request, the
calibration probes included. The same ``--llm-prompt-salt`` sends the same
prompts again, so a run can be reproduced.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from reliability_support import INI_WARNINGS_ARE_ERRORS, attach_args, bench_entries, request_lines

from pytest_llmperf.testing.harness import DetServer, running_detserver

TWO_ALIKE = """
def test_first(llm_perf):
    llm_perf.run(input_tokens=17, output_tokens=4, requests=8)

def test_second(llm_perf):
    llm_perf.run(input_tokens=17, output_tokens=4, requests=8)
"""


def prompts_by_test(server: DetServer, requests: Path, seen_before: int) -> dict[str, list[str]]:
    """The prompts the server received after its first ``seen_before`` log lines, per test.

    A request is tied to its test by its ``x-request-id`` in the test's JSONL; the
    calibration probes carry no id and belong to the test whose requests follow them.
    """
    owner = {line["request_id"]: line["_file"].split("test_fresh.py_")[1] for line in request_lines(requests)}
    entries = [json.loads(line) for line in server.stamp_log.read_text().splitlines()[seen_before:]]
    found: dict[str, list[str]] = {}
    pending: list[str] = []
    for entry in entries:
        if entry["id"] in owner:
            found.setdefault(owner[entry["id"]], []).extend([*pending, entry["prompt"]])
            pending = []
        else:
            pending.append(entry["prompt"])
    assert pending == []
    return found


def session(
    pytester: pytest.Pytester, server: DetServer, tmp_path: Path, name: str, *args: str
) -> dict[str, list[str]]:
    seen = len(server.stamp_log.read_text().splitlines()) if server.stamp_log.exists() else 0
    requests = tmp_path / name
    result = pytester.runpytest_subprocess(
        *attach_args(server), "-p", "no:randomly", f"--llm-save-requests={requests}",
        f"--benchmark-json={tmp_path / name}.json", *args, timeout=120,
    )  # fmt: skip
    result.assert_outcomes(passed=2)
    for line in request_lines(requests):
        assert line["input_tokens"] == 17  # exact lengths, as the server counted them
    return prompts_by_test(server, requests, seen)


def test_no_prompt_is_sent_twice_in_a_session_or_across_sessions(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makeini(INI_WARNINGS_ARE_ERRORS)
    pytester.makepyfile(test_fresh=TWO_ALIKE)
    with running_detserver(
        tmp_path / "server", model="org/det", ttft_ms=2, itl_ms=1, args=("--log-prompts",)
    ) as server:
        one = session(pytester, server, tmp_path, "one")
        two = session(pytester, server, tmp_path, "two")
        salted_a = session(pytester, server, tmp_path, "salted-a", "--llm-prompt-salt=fixed-7")
        salted_b = session(pytester, server, tmp_path, "salted-b", "--llm-prompt-salt=fixed-7")

    first, second = one["test_first_org_det"], one["test_second_org_det"]
    assert len(first) == len(second) >= 8 + 1  # measured and warm-up requests, probes too
    assert len(set(first)) == len(first)  # no repeat inside a test
    assert set(first).isdisjoint(second)  # the later test sends nothing the earlier one sent
    sent_in_one = set(first) | set(second)
    assert sent_in_one.isdisjoint(two["test_first_org_det"] + two["test_second_org_det"])

    # The same salt sends exactly the same prompts, in the same order; and the JSON records it.
    assert salted_a == salted_b
    assert set(salted_a["test_first_org_det"]).isdisjoint(sent_in_one)
    assert {llm["prompt_salt"] for llm in bench_entries(tmp_path / "salted-a.json").values()} == {"fixed-7"}
    random_salts = {llm["prompt_salt"] for llm in bench_entries(tmp_path / "one.json").values()}
    assert len(random_salts) == 1
    assert random_salts != {llm["prompt_salt"] for llm in bench_entries(tmp_path / "two.json").values()}

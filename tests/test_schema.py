"""The ``extra_info["llm"]`` layout: samples, the entry builder, and reading schema 1 and 2."""

from __future__ import annotations

import pytest

from pytest_llmperf.records import Outcome, RequestRecord, RunResult, Scenario, Summary
from pytest_llmperf.schema import (
    REQUIRED_LLM_KEYS,
    RUN_MARK_KEY,
    SCHEMA,
    case_key,
    engine_version_of,
    llm_info,
    request_samples,
    run_mark,
    run_passed,
)


def test_request_samples_are_per_request_figures_of_successful_measured_requests() -> None:
    ms = 1_000_000

    def rec(
        i: int, chunks_ms: tuple[float, ...], tokens: tuple[int, ...], warmup: bool = False
    ) -> RequestRecord:
        chunk_ns = tuple(int(c * ms) for c in chunks_ms)
        return RequestRecord(
            f"r{i}", "s", 8, sum(tokens), 0, 0, chunk_ns[-1] if chunk_ns else 5 * ms, chunk_ns, tokens,
            "usage", 8, sum(tokens) if tokens else None, 200, None if chunk_ns else "timeout", warmup,
        )  # fmt: skip

    records = (
        rec(0, (10, 30, 40), (2, 1, 1), warmup=True),
        rec(1, (20, 40, 60, 80), (1, 1, 1, 1)),  # TTFT 20, E2E 80, 4 tokens: TPOT 20, gaps 20 20 20
        rec(2, (50, 90), (1, 3)),  # a 3-token chunk: gaps 40/3 x3, TPOT (90-50)/3
        rec(3, (50,), (1,)),  # one token: no TPOT, no ITL
        rec(4, (), ()),  # failed
    )
    summary = Summary(4, 3, 1, 1.0, None, None, None, None, None, None, None, None, 0.25, None, None, 0)
    result = RunResult("m", "b", Scenario(8, 4), records, summary)
    samples = request_samples(result)
    assert samples["ttft_ms"] == [20.0, 50.0, 50.0]
    assert samples["e2e_ms"] == [80.0, 90.0, 50.0]
    assert samples["tpot_ms"] == pytest.approx([20.0, 40 / 3])
    assert samples["itl_ms"] == pytest.approx([20.0, 40 / 3])
    assert samples["output_tok_per_s"] == pytest.approx([4 / 0.080, 4 / 0.090, 1 / 0.050])


def test_an_entry_has_every_required_key_and_names_engine_and_version_apart() -> None:
    summary = Summary(0, 0, 0, 0.0, None, None, None, None, None, None, None, None, 0.0, None, None, 0)
    result = RunResult("gemma3-270m", "llamacpp", Scenario(8, 4), (), summary)
    info = llm_info(result, Outcome("fail-budget", ("r",)), engine="llama.cpp", engine_version="b6123")
    assert [key for key in REQUIRED_LLM_KEYS if key not in info] == []
    assert (info["schema"], info["engine"], info["engine_version"]) == (SCHEMA, "llama.cpp", "b6123")
    assert (info["outcome"], info["reasons"]) == ("fail-budget", ["r"])


@pytest.mark.parametrize(
    ("llm", "version"),
    [
        ({"schema": 1, "engine": "b6123"}, "b6123"),  # schema 1 kept the version under "engine"
        ({"schema": 2, "engine": "llama.cpp", "engine_version": "b6123"}, "b6123"),
        ({"schema": 2, "engine": "llama.cpp", "engine_version": None}, None),
        ({"schema": 1, "engine": ""}, None),
    ],
)
def test_engine_version_is_read_from_either_schema(llm: dict[str, object], version: str | None) -> None:
    assert engine_version_of(llm) == version


def test_a_run_mark_passes_only_a_clean_session_and_says_why_not() -> None:
    clean = run_mark(failed=0, errors=0, invalid=0, interrupted=False)
    assert clean == {
        "schema": 1,
        "passed": True,
        "failed": 0,
        "errors": 0,
        "invalid": 0,
        "interrupted": False,
    }
    assert run_passed({RUN_MARK_KEY: clean, "benchmarks": []}) == (True, "")
    bad = run_mark(failed=2, errors=1, invalid=1, interrupted=True)
    assert run_passed({RUN_MARK_KEY: bad}) == (
        False,
        "that session did not pass (2 failed, 1 errored, 1 invalid, interrupted)",
    )


def test_an_unmarked_run_passes_on_its_recorded_outcomes() -> None:
    def doc(*outcomes: str) -> dict[str, object]:
        benches = [
            {"fullname": f"t{i}", "extra_info": {"llm": {"outcome": o}}} for i, o in enumerate(outcomes)
        ]
        return {"benchmarks": [*benches, {"fullname": "plain", "extra_info": {}}]}

    assert run_passed(doc("pass", "pass")) == (True, "")
    assert run_passed(doc("pass", "invalid", "fail-budget")) == (
        False,
        "2 of its 3 tests did not pass (fail-budget, invalid)",
    )


def test_case_key_is_the_case_of_a_repeat_or_the_fullname() -> None:
    assert case_key({"case": "t.py::test[m]", "repeat": 2}, "t.py::test[m-repeat2]") == "t.py::test[m]"
    assert case_key({}, "t.py::test[m]") == "t.py::test[m]"

"""Realistic traffic against the deterministic server: every prompt as the plan says, every run exact.

The deterministic server counts one token per word plus BOS (plus its chat
template on the chat API), logs each prompt it received (``--log-prompts``)
and answers with known words, so each request's length, prefix and history
can be read back from what the server saw.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from load_support import traffic_of

from pytest_llmperf.errors import ConfigError
from pytest_llmperf.measure import realistic
from pytest_llmperf.measure.client import Target
from pytest_llmperf.measure.runner import Subject
from pytest_llmperf.measure.traffic import Normal, Uniform
from pytest_llmperf.measure.wire import response_text
from pytest_llmperf.records import Scenario
from pytest_llmperf.testing.harness import DetServer, running_detserver


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DetServer]:
    """A deterministic server that logs each prompt: TTFT 10 ms, then a token every 1 ms."""
    with running_detserver(
        tmp_path_factory.mktemp("logged"), ttft_ms=10, itl_ms=1, args=("--log-prompts",)
    ) as server:
        yield server


def prompts_seen(server: DetServer, ids: set[str]) -> dict[str, str]:
    return {rid: entry["prompt"] for rid, entry in server.stamps().items() if rid in ids}


def test_each_request_gets_its_own_drawn_length_exactly(logged: DetServer) -> None:
    target = logged.target()
    work = traffic_of(
        where="t", input_tokens=Uniform(8, 40), output_tokens=Normal(6, 3, low=2, high=9), seed=7
    )
    scenario = Scenario(24, 6, concurrency=3, requests=12, warmup=1)
    plan = realistic.plan(target, scenario, work, "salt")
    asked_in = [p.input_tokens for p in plan.requests]
    assert len(set(asked_in)) > 3
    assert all(8 <= n <= 40 for n in asked_in)
    # Drawn from the seed alone: the same seed asks the same lengths, whatever the salt.
    again = realistic.plan(target, scenario, work, "other salt")
    assert [p.input_tokens for p in again.requests] == asked_in
    assert [p.output_tokens for p in again.requests] == [p.output_tokens for p in plan.requests]
    assert [p.text for p in again.requests] != [p.text for p in plan.requests]  # fresh words per salt

    result = realistic.measure(Subject(target, "m", "openai"), scenario, plan)
    assert result.invalid == ()
    in_order = sorted(result.records, key=lambda r: int(r.request_id.rsplit("-", 1)[1]))
    for planned, rec in zip(plan.requests, in_order, strict=True):
        assert rec.input_tokens == planned.input_tokens == rec.input_tokens_requested
        assert rec.output_tokens == planned.output_tokens == rec.output_tokens_requested
    traffic = result.extra["traffic"]
    assert traffic["input"] == {"kind": "uniform", "low": 8, "high": 40}  # type: ignore[index]
    assert traffic["input_tokens_counted"]["min"] >= 8  # type: ignore[index]


def test_a_shared_prefix_opens_every_prompt_of_its_group_with_exactly_p_tokens(logged: DetServer) -> None:
    target = logged.target()
    work = traffic_of(where="t", input_tokens=40, output_tokens=4, shared_prefix=24, prefix_groups=2)
    plan = realistic.plan(target, Scenario(40, 4, concurrency=2, requests=6, warmup=0), work, "salt")
    words = [p.text.split() for p in plan.requests]
    # The server adds BOS: a prefix of 24 tokens is 23 words.
    heads = [" ".join(w[:23]) for w in words]
    assert heads[0::2] == [heads[0]] * 3
    assert heads[1::2] == [heads[1]] * 3
    assert heads[0] != heads[1]
    assert [len(w) + 1 for w in words] == [40] * 6
    assert len({" ".join(w[23:]) for w in words}) == 6  # each request's own suffix is fresh


def test_a_conversation_sends_each_turn_with_the_history_and_the_previous_answer(logged: DetServer) -> None:
    target = logged.target(api="chat")
    work = traffic_of(where="t", input_tokens=12, output_tokens=5, turns=3)
    scenario = Scenario(12, 5, concurrency=2, requests=6, warmup=1, turns=3)
    plan = realistic.plan(target, scenario, work, "salt")
    result = realistic.measure(Subject(target, "m", "openai"), scenario, plan)
    assert result.invalid == ()
    assert result.summary.errors == 0
    seen = prompts_seen(logged, {r.request_id for r in result.records})
    by_index = {int(r.request_id.rsplit("-", 1)[1]): r for r in result.records}
    for conversation in range(2):
        turns = [by_index[1 + 3 * conversation + t] for t in range(3)]
        texts = [seen[r.request_id] for r in turns]
        # Each turn's prompt holds every earlier turn's prompt and answer, in order.
        assert texts[1].startswith(texts[0] + "\n")
        assert texts[2].startswith(texts[1] + "\n")
        assert "the model said" in texts[1]  # the server's answer words
        # ...so its prompt grows by the answer and a new message of its own 12-token-ish length.
        assert turns[0].input_tokens < turns[1].input_tokens < turns[2].input_tokens
        # and turn k+1 was sent only after turn k ended.
        assert turns[0].end_ns <= turns[1].sent_ns
        assert turns[1].end_ns <= turns[2].sent_ns


def test_a_dataset_is_sent_as_it_is_or_cut_and_padded_to_the_asked_length(
    logged: DetServer, tmp_path: Path
) -> None:
    data = tmp_path / "prompts.jsonl"
    lines = [{"prompt": " ".join(f"w{i}" for i in range(n))} for n in (3, 30, 9)]
    data.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    target = logged.target()
    as_is = traffic_of(where="t", input_tokens=None, output_tokens=4, dataset=data, seed=1)
    plan = realistic.plan(target, Scenario(1, 4, requests=4, warmup=0), as_is, "salt")
    assert sorted(p.input_tokens for p in plan.requests[:3]) == [4, 10, 31]  # words + BOS, as counted
    assert plan.info["dataset_reused"] == 1  # 4 requests from 3 lines
    assert plan.nominal_input == round(sum(p.input_tokens for p in plan.requests) / 4)  # type: ignore[misc]
    fitted = traffic_of(where="t", input_tokens=12, output_tokens=4, dataset=data, seed=1)
    cut = realistic.plan(target, Scenario(12, 4, requests=3, warmup=0), fitted, "salt")
    assert [p.input_tokens for p in cut.requests] == [12, 12, 12]
    assert all(len(p.text.split()) == 11 for p in cut.requests)
    long = next(p for p in cut.requests if p.text.startswith("w0 w1 w2 w3"))
    assert long.text.split()[:11] == [f"w{i}" for i in range(11)]  # cut from the end, its own words kept


def test_a_dataset_at_asked_lengths_needs_the_servers_tokenizer(logged: DetServer, tmp_path: Path) -> None:
    data = tmp_path / "p.jsonl"
    data.write_text('{"prompt": "a b c"}\n')
    work = traffic_of(where="t", input_tokens=12, output_tokens=4, dataset=data)
    with pytest.raises(ConfigError, match="needs the server's tokenizer"):
        realistic.plan(logged.target(tokenize=None), Scenario(12, 4, requests=2, warmup=0), work, "")


def test_a_duration_run_starts_nothing_after_its_duration(det: DetServer) -> None:
    work = traffic_of(where="t", input_tokens=16, output_tokens=8)
    scenario = Scenario(16, 8, concurrency=2, requests=500, warmup=1, duration_s=0.6)
    planned = realistic.plan(det.target(), scenario, work)
    result = realistic.measure(Subject(det.target(), "m", "openai"), scenario, planned)
    measured = result.measured
    start = min(r.sent_ns for r in measured)
    # A request takes ~34 ms (TTFT 20 ms + 7 x 2 ms): ~35 in 0.6 s at concurrency 2, far below the cap.
    assert 10 < len(measured) < 100
    assert max(r.scheduled_ns for r in measured) - start < 0.6e9
    assert max(r.end_ns for r in measured) - start > 0.55e9
    assert result.extra["stopped_early"] is False


def test_the_cache_flag_is_set_only_where_a_request_can_say_it(det: DetServer) -> None:
    plain = det.target()
    assert realistic.with_cache(plain, True) is plain
    caps = dataclasses.replace(plain.capabilities, extra_body={"ignore_eos": True, "cache_prompt": False})
    llama_like = Target(plain.base_url, plain.model, caps)
    assert realistic.with_cache(llama_like, True).capabilities.extra_body == {
        "ignore_eos": True,
        "cache_prompt": True,
    }
    assert realistic.with_cache(llama_like, None) is llama_like


def test_the_answer_text_is_read_back_from_a_stream() -> None:
    sse = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
        b'data: {"choices":[{"text":" the"}]}\n\ndata: {"choices":[{"text":" model"}]}\n\ndata: [DONE]\n\n'
    )
    assert response_text("completions", [(0, sse)]) == " the model"
    chat = (
        b"HTTP/1.1 200 OK\r\n\r\n"
        b'data: {"choices":[{"delta":{"role":"assistant"}}]}\n\n'
        b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
    )
    assert response_text("chat", [(0, chat)]) == "hi"
    ndjson = b'HTTP/1.1 200 OK\r\n\r\n{"response":"a"}\n{"response":"b","done":true}\n'
    assert response_text("ollama-generate", [(0, ndjson)]) == "ab"
    assert response_text("completions", [(0, b"HTTP/1.1 500 Oops\r\n\r\n{}")]) == ""

"""Exact input lengths: the fitting logic on a fake tokenizer, then against the
deterministic server's /tokenize (both dialects) and by usage calibration."""

from __future__ import annotations

import dataclasses
import random

import pytest

from pytest_llmperf.errors import ConfigError
from pytest_llmperf.measure import prompts, runner
from pytest_llmperf.records import Api, Scenario
from pytest_llmperf.testing.harness import DetServer


def fake_counter(calls: list[str] | None = None) -> prompts.Counter:
    """BOS + one token per word, except hyphenated words (two tokens)."""

    def count(text: str) -> int:
        if calls is not None:
            calls.append(text)
        return 1 + sum(2 if "-" in w else 1 for w in text.split())

    return count


def test_single_token_words_drops_the_longer_ones() -> None:
    calls: list[str] = []
    words = ["a", "b", "c-d", "e", "f", "g", "h-i", "j"]
    assert prompts.single_token_words(fake_counter(calls), words) == ["a", "b", "e", "f", "g", "j"]
    assert len(calls) < 2 * len(words)  # halving, not one call per word


@pytest.mark.parametrize("n", [1, 2, 17, 128, 1000])
def test_fit_prompt_is_exact(n: int) -> None:
    count = fake_counter()
    p = prompts.fit_prompt(n, ["x", "y", "z"], random.Random(1), count, overhead=1)
    assert p.tokens == n
    assert count(p.text) == n


def test_fit_prompt_repairs_multi_token_words() -> None:
    count = fake_counter()
    p = prompts.fit_prompt(64, ["ab", "c-d"], random.Random(3), count, overhead=1)
    assert p.tokens == 64
    assert count(p.text) == 64


def test_words_for_draws_a_line_through_two_probes() -> None:
    assert prompts.words_for(128, (8, 9), (127, 128)) == 127  # one token per word, BOS
    assert prompts.words_for(101, (10, 25), (50, 105)) == 48  # two tokens per word, 5 overhead


def server_count(det: DetServer, api: Api, text: str) -> int:
    """What the server's usage will say: asked through its vLLM /tokenize."""
    counter = prompts.tokenizer_counter(det.target(api))
    assert counter is not None
    return counter(text)


@pytest.mark.parametrize("dialect", ["vllm", "llamacpp"])
@pytest.mark.parametrize("api", ["completions", "chat"])
def test_prompts_via_tokenize_are_exact_and_distinct(det: DetServer, api: Api, dialect: str) -> None:
    target = det.target(api, tokenize=dialect)
    built = prompts.build_prompts(target, 40, 6, seed=7)
    assert [p.tokens for p in built] == [40] * 6
    assert all(server_count(det, api, p.text) == 40 for p in built)
    assert len({tuple(p.text.split()[:3]) for p in built}) == 6  # different from the start
    assert built == prompts.build_prompts(target, 40, 6, seed=7)  # seeded
    assert built != prompts.build_prompts(target, 40, 6, seed=8)


@pytest.mark.parametrize("tokenize", ["vllm", None], ids=["tokenizer", "calibrated"])
def test_the_salt_keys_the_prompts_and_keeps_their_length(det: DetServer, tokenize: str | None) -> None:
    target = det.target("completions", tokenize=tokenize)
    a = prompts.build_prompts(target, 40, 6, seed=0, salt="session-1/test_a")
    b = prompts.build_prompts(target, 40, 6, seed=0, salt="session-1/test_b")
    assert {p.text for p in a}.isdisjoint(p.text for p in b)  # another test: other prompts
    assert a == prompts.build_prompts(target, 40, 6, seed=0, salt="session-1/test_a")  # reproducible
    for built in (a, b):
        assert all(server_count(det, "completions", p.text) == 40 for p in built)


@pytest.mark.parametrize("api", ["completions", "ollama-generate", "ollama-chat"])
def test_usage_calibration_without_tokenizer(det: DetServer, api: Api) -> None:
    target = det.target(api, tokenize=None)
    built = prompts.build_prompts(target, 33, 4, seed=1)
    assert all(p.tokens is None for p in built)  # not checked one by one
    overhead = 4 if "chat" in api else 1
    assert all(len(p.text.split()) == 33 - overhead for p in built)


@pytest.mark.parametrize("api", ["completions", "chat", "ollama-generate"])
def test_achieved_input_tokens_are_recorded(det: DetServer, api: Api) -> None:
    sc = Scenario(input_tokens=50, output_tokens=4, concurrency=2, requests=4, warmup=1)
    result = runner.measure(runner.Subject(det.target(api), model="m", backend="det"), sc)
    assert [r.input_tokens for r in result.records] == [50] * 5
    assert result.summary.input_tokens_mean == 50.0
    assert result.extra["prompt_tokens_checked"] is (not api.startswith("ollama"))


def test_below_the_template_overhead_is_a_usage_error(det: DetServer) -> None:
    with pytest.raises(ConfigError, match="input_tokens=3 is below the 4 tokens"):
        prompts.build_prompts(det.target("chat"), 3, 1, seed=0)


def test_no_tokenizer_dialect_means_calibration(det: DetServer) -> None:
    caps = dataclasses.replace(det.capabilities("completions"), tokenize=None)
    assert prompts.tokenizer_counter(dataclasses.replace(det.target(), capabilities=caps)) is None

"""Traffic as values: seeded length distributions, datasets and the workload's checks and record."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from load_support import traffic_of

from pytest_llmperf.errors import ConfigError
from pytest_llmperf.measure.traffic import (
    Empirical,
    Fixed,
    Normal,
    Uniform,
    draw_lengths,
    load_dataset,
)


def test_each_distribution_draws_within_its_bounds_and_the_same_seed_draws_the_same() -> None:
    for lengths in (Fixed(64), Uniform(16, 256), Normal(128, 40, low=32, high=200), Empirical((7, 70, 700))):
        drawn = draw_lengths(lengths, 500, seed=3, which="input")
        assert drawn == draw_lengths(lengths, 500, seed=3, which="input")
        assert drawn != draw_lengths(lengths, 500, seed=4, which="input") or isinstance(lengths, Fixed)
        assert lengths.low <= min(drawn)
        assert max(drawn) <= lengths.high
    assert draw_lengths(Fixed(64), 3, 0, "input") == [64, 64, 64]
    assert set(draw_lengths(Empirical((7, 70, 700)), 200, 0, "output")) == {7, 70, 700}


def test_uniform_covers_its_range_and_normal_clips_at_its_bounds() -> None:
    assert set(Uniform(1, 4).draw(400, random.Random(0))) == {1, 2, 3, 4}
    clipped = Normal(100, 1000, low=10, high=20).draw(400, random.Random(0))
    assert set(clipped) <= set(range(10, 21))
    assert clipped.count(10) > 100
    assert clipped.count(20) > 100
    assert Normal(100, 10).high == 130  # mean + 3 sd by default
    assert (Uniform(64, 256).mean, Empirical((1, 2, 6)).mean) == (160, 3)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Fixed(0), "Fixed(0): tokens must be a whole number >= 1, got 0"),
        (lambda: Uniform(10, 5), "Uniform(10, 5): low must be <= high; e.g. Uniform(64, 256)"),
        (lambda: Uniform(1.5, 5), "Uniform(1.5, 5): low must be a whole number >= 1, got 1.5"),
        (lambda: Normal(0, 5), "Normal(0, 5): mean must be a number >= 1"),
        (lambda: Normal(100, -1), "Normal(100, -1): stddev must be a number >= 0"),
        (lambda: Empirical(()), "Empirical(()): give at least one length, e.g. Empirical([64, 128, 512])"),
        (lambda: Empirical((5, 0)), "Empirical(...): every value must be a whole number >= 1, got 0"),
    ],
)
def test_a_bad_distribution_says_what_to_type(make: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        make()  # type: ignore[operator]
    assert str(err.value) == message


def write_jsonl(path: Path, *lines: object) -> Path:
    path.write_text(
        "\n".join(json.dumps(line) if not isinstance(line, str) else line for line in lines) + "\n"
    )
    return path


def test_a_dataset_holds_prompts_and_chat_messages_and_pins_its_bytes(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        {"prompt": "tell me a story"},
        "",
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "why?"}],
         "output_tokens": 12},
    )  # fmt: skip
    data = load_dataset(path)
    assert [e.flat() for e in data.entries] == ["tell me a story", "be brief\nwhy?"]
    assert data.entries[1].messages == (("system", "be brief"), ("user", "why?"))
    assert data.entries[1].output_tokens == 12
    assert data.describe() == {"path": str(path), "sha256": data.sha256, "lines": 2}
    assert len(data.sha256) == 64


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["not json"], "line 1 of {p} is not JSON; each line is"),
        ([{"prompt": ""}], "line 1 of {p}: no prompt; each line is"),
        ([{"messages": [{"role": "user"}]}], "line 1 of {p}: every message needs a text content;"),
        (
            [{"prompt": "x", "output_tokens": 0}],
            "line 1 of {p}: output_tokens must be a whole number >= 1, got 0",
        ),
        ([[1, 2]], "line 1 of {p}: not a JSON object;"),
        ([], "llm_perf.run(dataset='{p}'): the file has no prompts;"),
    ],
)
def test_a_bad_dataset_names_the_line_and_the_shape(
    tmp_path: Path, lines: list[object], message: str
) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", *lines) if lines else tmp_path / "d.jsonl"
    if not lines:
        path.write_text("\n")
    with pytest.raises(ConfigError) as err:
        load_dataset(path)
    assert str(err.value).startswith(message.format(p=path))


def test_a_missing_dataset_says_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"llm_perf.run\(dataset='nope.jsonl'\): cannot read it .*JSONL file"
    ):
        load_dataset("nope.jsonl")


def test_the_workload_checks_its_arguments_and_records_exactly_what_it_asks(tmp_path: Path) -> None:
    plain = traffic_of(where="llm_perf.run", input_tokens=64, output_tokens=16)
    assert plain.plain
    assert plain.cache is None
    shared = traffic_of(
        where="llm_perf.run",
        input_tokens=Uniform(64, 96),
        output_tokens=8,
        shared_prefix=48,
        prefix_groups=2,
        seed=5,
    )
    assert not shared.plain
    assert shared.cache is True  # a shared prefix is measured with the cache on, on purpose
    assert shared.describe() == {
        "input": {"kind": "uniform", "low": 64, "high": 96},
        "output": {"kind": "fixed", "tokens": 8},
        "seed": 5,
        "shared_prefix_tokens": 48,
        "prefix_groups": 2,
        "prefix_cache": "on",
    }
    assert shared.context_tokens() == 96 + 8
    chat = traffic_of(where="llm_perf.run", input_tokens=32, output_tokens=16, turns=3, prefix_cache=False)
    assert (chat.cache, chat.context_tokens(), chat.describe()["turns"]) == (False, 3 * 48, 3)
    data = write_jsonl(tmp_path / "d.jsonl", {"prompt": "hello there"})
    from_file = traffic_of(where="llm_perf.run", input_tokens=None, output_tokens=16, dataset=data)
    assert from_file.input is None
    assert from_file.describe()["input"] == "dataset"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"input_tokens": "64"},
            "llm_perf.run(input_tokens='64'): input_tokens must be a whole number >= 1 or",
        ),
        ({"shared_prefix": 64}, "llm_perf.run(shared_prefix=64): every prompt needs tokens after its shared"),
        ({"shared_prefix": 0}, "llm_perf.run(shared_prefix=0): shared_prefix must be a whole number >= 1"),
        ({"turns": 0}, "llm_perf.run(turns=0): turns must be a whole number >= 1, got 0"),
        ({"prefix_cache": "yes"}, "llm_perf.run(prefix_cache='yes'): prefix_cache is True, False or None"),
        ({"dataset": 3}, "llm_perf.run(dataset=3): give the path of a JSONL file"),
    ],
)
def test_an_impossible_workload_names_the_argument(changes: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"input_tokens": 64, "output_tokens": 16, **changes}
    with pytest.raises(ConfigError) as err:
        traffic_of(where="llm_perf.run", **args)
    assert str(err.value).startswith(message)

"""Traffic, as values: length distributions, a user's dataset, and the traffic they make.

``TrafficArgs`` holds a call's traffic arguments as the user typed them;
``check_traffic`` turns them into a ``Traffic``, which says what each request
of a run asks, beyond the load shape (``Scenario``): its input and output lengths (``Fixed``, ``Uniform``,
``Normal`` with clipping, or an ``Empirical`` list, all drawn from a seeded
RNG, so the same seed asks the same lengths), prompts from a JSONL
``Dataset`` instead of fresh words, a prefix of P tokens shared by groups of
requests (prefix caching measured on purpose), and multi-turn conversations.
``describe`` is its exact, reproducible record for the JSON
(``extra_info["llm"]["traffic"]``).

Everything here is pure (reading a dataset file aside) and checked when it is
built: a bad value is a ``ConfigError`` that names it and says what to type.
Building the prompts is ``realistic``'s job; this module must not talk to a
server.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pytest_llmperf.errors import ConfigError
from pytest_llmperf.measure.load import Shape


class Lengths(Protocol):
    """Token lengths for a run's requests: drawn per request from a seeded RNG."""

    @property
    def low(self) -> int: ...

    @property
    def high(self) -> int: ...

    @property
    def mean(self) -> float: ...

    def draw(self, count: int, rng: random.Random) -> list[int]: ...

    def describe(self) -> dict[str, object]: ...


def _whole(where: str, name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: {name} must be a whole number >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True)
class Fixed:
    """Every request asks exactly ``tokens``."""

    tokens: int

    def __post_init__(self) -> None:
        _whole(f"Fixed({self.tokens!r})", "tokens", self.tokens)

    @property
    def low(self) -> int:
        return self.tokens

    @property
    def high(self) -> int:
        return self.tokens

    @property
    def mean(self) -> float:
        return float(self.tokens)

    def draw(self, count: int, rng: random.Random) -> list[int]:
        return [self.tokens] * count

    def describe(self) -> dict[str, object]:
        return {"kind": "fixed", "tokens": self.tokens}


@dataclass(frozen=True)
class Uniform:
    """Whole numbers from ``low`` to ``high``, both included, equally likely."""

    low: int
    high: int

    def __post_init__(self) -> None:
        where = f"Uniform({self.low!r}, {self.high!r})"
        _whole(where, "low", self.low)
        if _whole(where, "high", self.high) < self.low:
            raise ConfigError(f"{where}: low must be <= high; e.g. Uniform(64, 256)")

    @property
    def mean(self) -> float:
        return (self.low + self.high) / 2

    def draw(self, count: int, rng: random.Random) -> list[int]:
        return [rng.randint(self.low, self.high) for _ in range(count)]

    def describe(self) -> dict[str, object]:
        return {"kind": "uniform", "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Normal:
    """``round(gauss(mean, stddev))`` clipped to ``[low, high]`` (``high`` defaults to mean + 3 sd)."""

    mean: float
    stddev: float
    low: int = 1
    high: int = 0

    def __post_init__(self) -> None:
        where = f"Normal({self.mean!r}, {self.stddev!r})"
        for name, value in (("mean", self.mean), ("stddev", self.stddev)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value < 0 or (name == "mean" and value < 1):
                raise ConfigError(f"{where}: {name} must be a number >= {1 if name == 'mean' else 0}")
        _whole(where, "low", self.low)
        if self.high == 0:
            object.__setattr__(self, "high", max(math.ceil(self.mean + 3 * self.stddev), self.low))
        if _whole(where, "high", self.high) < self.low:
            raise ConfigError(f"{where}: low must be <= high; e.g. Normal(128, 32, low=16, high=512)")

    def draw(self, count: int, rng: random.Random) -> list[int]:
        return [min(max(round(rng.gauss(self.mean, self.stddev)), self.low), self.high) for _ in range(count)]

    def describe(self) -> dict[str, object]:
        return {
            "kind": "normal",
            "mean": self.mean,
            "stddev": self.stddev,
            "low": self.low,
            "high": self.high,
        }


@dataclass(frozen=True)
class Empirical:
    """Lengths drawn with replacement from ``values`` (a production log's lengths, say)."""

    values: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(self.values))
        if not self.values:
            raise ConfigError("Empirical(()): give at least one length, e.g. Empirical([64, 128, 512])")
        for value in self.values:
            _whole("Empirical(...)", "every value", value)

    @property
    def low(self) -> int:
        return min(self.values)

    @property
    def high(self) -> int:
        return max(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    def draw(self, count: int, rng: random.Random) -> list[int]:
        return [rng.choice(self.values) for _ in range(count)]

    def describe(self) -> dict[str, object]:
        return {"kind": "empirical", "values": list(self.values)}


def lengths_of(where: str, name: str, value: object) -> Lengths:
    """A whole number becomes ``Fixed``; a distribution passes; anything else is a ``ConfigError``."""
    if isinstance(value, (Fixed, Uniform, Normal, Empirical)):
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{where}({name}={value!r}): {name} must be a whole number >= 1 or a length distribution "
            f"(Fixed, Uniform, Normal, Empirical from pytest_llmperf.measure.traffic); e.g. {name}=128"
        )
    return Fixed(value)


def draw_lengths(lengths: Lengths, count: int, seed: int, which: str) -> list[int]:
    """``count`` lengths; the RNG is keyed by ``seed`` and ``which`` only, so a seed always asks the same."""
    return lengths.draw(count, random.Random(f"lengths/{which}/{seed}"))


# -- datasets -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One dataset line: a prompt text or chat messages, and the output length it asks, if any."""

    text: str | None
    messages: tuple[tuple[str, str], ...] = ()
    output_tokens: int | None = None

    def flat(self) -> str:
        """The entry as one text: the prompt, or every message's content on its own line."""
        return self.text if self.text is not None else "\n".join(content for _, content in self.messages)


@dataclass(frozen=True)
class Dataset:
    """A JSONL file of prompts, read and checked once; ``sha256`` pins what was sent."""

    path: Path
    entries: tuple[Entry, ...]
    sha256: str

    def describe(self) -> dict[str, object]:
        return {"path": str(self.path), "sha256": self.sha256, "lines": len(self.entries)}


_DATASET_SHAPE = (
    'each line is {"prompt": "..."} or {"messages": [{"role": "user", "content": "..."}, ...]}, '
    'optionally with "output_tokens": N'
)


def _entry(obj: object, where: str) -> Entry:
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: not a JSON object; {_DATASET_SHAPE}")
    out = obj.get("output_tokens", obj.get("max_tokens"))
    if out is not None and (isinstance(out, bool) or not isinstance(out, int) or out < 1):
        raise ConfigError(f"{where}: output_tokens must be a whole number >= 1, got {out!r}")
    text = obj.get("prompt", obj.get("text"))
    if isinstance(text, str) and text.strip():
        return Entry(text, (), out)
    messages = obj.get("messages")
    if isinstance(messages, list) and messages:
        pairs = []
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("content"), str):
                raise ConfigError(f"{where}: every message needs a text content; {_DATASET_SHAPE}")
            pairs.append((str(message.get("role", "user")), message["content"]))
        return Entry(None, tuple(pairs), out)
    raise ConfigError(f"{where}: no prompt; {_DATASET_SHAPE}")


def load_dataset(path: str | Path, where: str = "llm_perf.run") -> Dataset:
    """Read and check a JSONL dataset; every problem names the line and the shape to write."""
    file = Path(path).expanduser()
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{where}(dataset={str(path)!r}): cannot read it ({exc.strerror or exc}); give the path of a "
            f"JSONL file where {_DATASET_SHAPE}"
        ) from None
    entries = []
    for number, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise ConfigError(f"line {number} of {file} is not JSON; {_DATASET_SHAPE}") from None
        entries.append(_entry(obj, f"line {number} of {file}"))
    if not entries:
        raise ConfigError(f"{where}(dataset={str(path)!r}): the file has no prompts; {_DATASET_SHAPE}")
    return Dataset(file, tuple(entries), hashlib.sha256(raw).hexdigest())


# -- the traffic ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Traffic:
    """What each request asks. ``input`` is ``None`` for a dataset's own prompts, as they are.

    ``shared_prefix`` tokens open every prompt of a group (``prefix_groups``
    groups, request i in group i mod groups); ``turns`` > 1 makes
    conversations. ``prefix_cache`` asks the server to cache prompts (where it
    lets a request say so, as llama-server does) or not; ``None`` is: on for
    shared prefixes and conversations, whose point is reuse, and the backend's
    default (off on llama-server) for fresh prompts, which have nothing to reuse.
    """

    input: Lengths | None
    output: Lengths
    dataset: Dataset | None = None
    shared_prefix: int = 0
    prefix_groups: int = 1
    turns: int = 1
    prefix_cache: bool | None = None
    seed: int = 0

    @property
    def plain(self) -> bool:
        """Fixed lengths, fresh prompts, one turn: what ``llm_perf.run`` always measured."""
        return (
            isinstance(self.input, Fixed)
            and isinstance(self.output, Fixed)
            and self.dataset is None
            and not self.shared_prefix
            and self.turns == 1
            and self.prefix_cache is None
        )

    @property
    def cache(self) -> bool | None:
        """Whether requests ask the server to cache their prompt: ``None`` leaves the backend's default."""
        if self.prefix_cache is not None:
            return self.prefix_cache
        return True if self.shared_prefix or self.turns > 1 else None

    def nominal_input(self) -> int:
        return round(self.input.mean) if self.input is not None else 0

    def shape(self) -> Shape:
        """The lengths a scenario is labelled with: the nominal (mean) lengths, and the turns."""
        return Shape(self.nominal_input() or 1, round(self.output.mean), self.turns)

    def context_tokens(self) -> int:
        """Tokens one request may need: the longest ask, times the turns of a conversation."""
        per_turn = (self.input.high if self.input is not None else 0) + self.output.high
        return per_turn * self.turns

    def describe(self) -> dict[str, object]:
        """The exact record of this traffic: with the seed, the same lengths and prompts again."""
        info: dict[str, object] = {
            "input": self.input.describe() if self.input is not None else "dataset",
            "output": self.output.describe(),
            "seed": self.seed,
        }
        if self.dataset is not None:
            info["dataset"] = self.dataset.describe()
        if self.shared_prefix:
            info["shared_prefix_tokens"] = self.shared_prefix
            info["prefix_groups"] = self.prefix_groups
        if self.turns > 1:
            info["turns"] = self.turns
        info["prefix_cache"] = {True: "on", False: "off", None: "server default"}[self.cache]
        return info


@dataclass(frozen=True)
class TrafficArgs:
    """A call's traffic arguments as typed: checked by ``check_traffic``, never before."""

    input_tokens: int | Lengths | None = 128
    output_tokens: int | Lengths = 64
    dataset: str | Path | None = None
    shared_prefix: int | None = None
    prefix_groups: int = 1
    turns: int = 1
    prefix_cache: bool | None = None


def check_traffic(where: str, args: TrafficArgs, seed: int = 0) -> Traffic:
    """The ``Traffic`` of a call's traffic arguments; a ``ConfigError`` names the first impossible one."""
    input_tokens, dataset, shared_prefix = args.input_tokens, args.dataset, args.shared_prefix
    prefix_groups, turns, prefix_cache = args.prefix_groups, args.turns, args.prefix_cache
    data = None
    if dataset is not None:
        if not isinstance(dataset, (str, Path)):
            raise ConfigError(f"{where}(dataset={dataset!r}): give the path of a JSONL file")
        data = load_dataset(dataset, where)
    lengths_in = (
        None if data is not None and input_tokens is None else lengths_of(where, "input_tokens", input_tokens)
    )
    lengths_out = lengths_of(where, "output_tokens", args.output_tokens)
    prefix = 0
    if shared_prefix is not None:
        prefix = _whole(f"{where}(shared_prefix={shared_prefix!r})", "shared_prefix", shared_prefix)
        if data is not None:
            raise ConfigError(
                f"{where}: shared_prefix builds its own prompts; leave out dataset or shared_prefix"
            )
        if lengths_in is None or prefix >= lengths_in.low:
            low = lengths_in.low if lengths_in is not None else 0
            raise ConfigError(
                f"{where}(shared_prefix={prefix}): every prompt needs tokens after its shared prefix, "
                f"but the shortest asks {low}; ask for shared_prefix < {low}"
            )
    groups = _whole(f"{where}(prefix_groups={prefix_groups!r})", "prefix_groups", prefix_groups)
    n_turns = _whole(f"{where}(turns={turns!r})", "turns", turns)
    if n_turns > 1 and data is not None:
        raise ConfigError(f"{where}: turns > 1 makes its own conversations; leave out dataset or turns")
    if prefix_cache is not None and not isinstance(prefix_cache, bool):
        raise ConfigError(f"{where}(prefix_cache={prefix_cache!r}): prefix_cache is True, False or None")
    return Traffic(
        input=lengths_in,
        output=lengths_out,
        dataset=data,
        shared_prefix=prefix,
        prefix_groups=groups,
        turns=n_turns,
        prefix_cache=prefix_cache,
        seed=seed,
    )


def realized(lengths: Sequence[int]) -> dict[str, float] | None:
    """min / mean / max of the lengths a run asked (``None`` when none were asked)."""
    if not lengths:
        return None
    return {"min": min(lengths), "mean": round(sum(lengths) / len(lengths), 3), "max": max(lengths)}

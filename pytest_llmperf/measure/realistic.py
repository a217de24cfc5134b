"""A run with realistic traffic, end to end: each request's prompt and length, then the load.

``plan`` builds every request of a ``traffic.Traffic`` before any clock
starts (control plane, like ``runner.prepare_requests``): lengths drawn from
the seeded distributions, fresh prompts fitted to each request's own length,
a dataset's prompts (as they are, or cut and padded to an asked length with
the same exact-length machinery), shared prefixes of exactly P tokens, and
the new user message of every conversation turn. ``measure`` runs it and
returns a ``RunResult`` like ``runner.measure``, with the traffic's record
in ``extra["traffic"]``.

A conversation's later turns cannot be built ahead: turn k+1 carries turn
k's answer. Its request is built when its worker sends it (``loadgen`` sends
a conversation's turns one after another), from the text of the previous
answer (``wire.response_text``); that costs a ``json.dumps`` on the event
loop, counted as client queue delay, never in TTFT.

Requests that share a prefix, and conversations, ask the server to cache
prompts where a request can say so (llama-server's ``cache_prompt``). This
module must not write files or print.
"""

from __future__ import annotations

import dataclasses
import random
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pytest_llmperf.errors import ConfigError
from pytest_llmperf.measure import client, loadgen, prompts, runner, wire
from pytest_llmperf.measure.client import Target
from pytest_llmperf.measure.traffic import Traffic, draw_lengths, realized
from pytest_llmperf.records import RequestRecord, RunResult, Scenario

Message = tuple[str, str]


@dataclass(frozen=True)
class Planned:
    """One request before it is sent: a prompt text, or chat messages, and the lengths it asks.

    ``input_tokens`` is the server's count of the prompt where it was checked
    (for a conversation's later turn: of its new message alone), else ``None``.
    """

    text: str
    messages: tuple[Message, ...] = ()
    input_tokens: int | None = None
    output_tokens: int = 1


@dataclass(frozen=True)
class Plan:
    """Every request of a run, warm-up ones first, and what the JSON records of how they were made."""

    requests: tuple[Planned, ...]
    checked: bool
    context_tokens: int
    info: Mapping[str, object]
    cache: bool | None = None
    """Whether the requests ask the server to cache their prompts (``Traffic.cache``)."""

    @property
    def nominal_input(self) -> int:
        known = [p.input_tokens for p in self.requests if p.input_tokens is not None]
        return round(sum(known) / len(known)) if known else 0


def with_cache(target: Target, cache: bool | None) -> Target:
    """``target`` whose requests ask the server to cache prompts (or not), where a request can say so."""
    caps = target.capabilities
    if cache is None or "cache_prompt" not in caps.extra_body:
        return target
    body = {**caps.extra_body, "cache_prompt": cache}
    return dataclasses.replace(target, capabilities=dataclasses.replace(caps, extra_body=body))


def _counted(counter: prompts.Counter | None, text: str) -> int | None:
    return counter(text) if counter is not None else None


def _shared_prefix(
    target: Target, traffic: Traffic, lengths: Sequence[int], stem: str, salt: str
) -> list[Planned]:
    counter = prompts.tokenizer_counter(target)
    p = traffic.shared_prefix
    if counter is None:
        # No tokenizer: word counts from the usage calibration; each request's usage says what it got.
        groups = traffic.prefix_groups
        built = prompts.build_prompts_of(target, [p] * groups + list(lengths), traffic.seed, salt)
        words = [b.text.split() for b in built[:groups]]
        return [
            Planned(" ".join([*words[i % groups], *b.text.split()[len(words[i % groups]) :]]), (), None, 0)
            for i, b in enumerate(built[groups:])
        ]
    pool = prompts.word_pool(target, counter)
    overhead = counter("")
    heads = [
        prompts.fit_prompt(p, pool, random.Random(f"{stem}/prefix/{g}"), counter, overhead).text
        for g in range(traffic.prefix_groups)
    ]
    out = []
    for i, n in enumerate(lengths):
        head = heads[i % len(heads)]

        def count(text: str, head: str = head) -> int:
            return counter(f"{head} {text}")

        tail = prompts.fit_prompt(n, pool, random.Random(f"{stem}/{i}"), count, p)
        out.append(Planned(f"{head} {tail.text}", (), tail.tokens, 0))
    return out


def _dataset(target: Target, traffic: Traffic, count: int, lengths: Sequence[int] | None) -> list[Planned]:
    data = traffic.dataset
    assert data is not None
    order = list(range(len(data.entries)))
    random.Random(f"dataset/{traffic.seed}").shuffle(order)
    counter = prompts.tokenizer_counter(target)
    if lengths is not None and counter is None:
        raise ConfigError(
            "a dataset cut to asked lengths needs the server's tokenizer (/tokenize), which this one lacks; "
            "leave input_tokens out to send the dataset's prompts as they are"
        )
    chat = target.capabilities.api in ("chat", "ollama-chat")
    out = []
    for i in range(count):
        entry = data.entries[order[i % len(order)]]
        if lengths is not None and counter is not None:
            pool = prompts.word_pool(target, counter)
            fitted = prompts.fit_text(entry.flat(), lengths[i], pool, random.Random(f"dataset/{i}"), counter)
            out.append(Planned(fitted.text, (), fitted.tokens, entry.output_tokens or 0))
        elif entry.messages and chat:
            single = len(entry.messages) == 1 and entry.messages[0][0] == "user"
            tokens = _counted(counter, entry.messages[0][1]) if single else None
            out.append(Planned(entry.flat(), entry.messages, tokens, entry.output_tokens or 0))
        else:
            out.append(Planned(entry.flat(), (), _counted(counter, entry.flat()), entry.output_tokens or 0))
    return out


def plan(target: Target, scenario: Scenario, traffic: Traffic, prompt_salt: str = "") -> Plan:
    """Every request of ``scenario`` under ``traffic`` (warm-up ones first), built and checked."""
    total = scenario.warmup + scenario.requests
    stem = f"{prompt_salt}/{traffic.seed}"
    target = with_cache(target, traffic.cache)
    asked_in = draw_lengths(traffic.input, total, traffic.seed, "input") if traffic.input else None
    asked_out = draw_lengths(traffic.output, total, traffic.seed, "output")
    if traffic.dataset is not None:
        planned = _dataset(target, traffic, total, asked_in)
    elif traffic.shared_prefix:
        assert asked_in is not None
        planned = _shared_prefix(target, traffic, asked_in, stem, prompt_salt)
    else:
        assert asked_in is not None
        built = prompts.build_prompts_of(target, asked_in, traffic.seed, prompt_salt)
        planned = [Planned(b.text, (), b.tokens, 0) for b in built]
    planned = [
        dataclasses.replace(p, output_tokens=p.output_tokens or asked_out[i]) for i, p in enumerate(planned)
    ]
    ins = [p.input_tokens for p in planned if p.input_tokens is not None]
    outs = [p.output_tokens for p in planned]
    info = {
        **traffic.describe(),
        "input_tokens_asked": realized(asked_in or []) if asked_in else None,
        "input_tokens_counted": realized(ins),
        "output_tokens_asked": realized(outs),
    }
    if traffic.dataset is not None and total > len(traffic.dataset.entries):
        info["dataset_reused"] = total - len(traffic.dataset.entries)
    # An uncounted prompt (no tokenizer) is sized at two tokens a word, with room for a template.
    longest = max(p.input_tokens or 2 * len(p.text.split()) + 16 for p in planned)
    per_turn = max(longest, *(asked_in or [0])) + max(outs)
    checked = all(p.input_tokens is not None for p in planned)
    return Plan(tuple(planned), checked, per_turn * traffic.turns, info, traffic.cache)


def body(target: Target, messages: Sequence[Message], max_tokens: int) -> dict[str, object]:
    """The request body for chat messages: as messages on a chat API, as one text on a completions API."""
    out = client.request_body(target, "", max_tokens)
    if target.capabilities.api in ("chat", "ollama-chat"):
        out["messages"] = [{"role": role, "content": content} for role, content in messages]
    else:
        out["prompt"] = "\n".join(content for _, content in messages)
    return out


def _prepare(
    target: Target, scenario: Scenario, p: Planned, request_id: str, warmup: bool, keep_alive: bool = True
) -> client.Prepared:
    return client.prepare(
        target,
        p.text,
        client.RequestSpec(request_id, scenario.name, p.input_tokens or 0, p.output_tokens, warmup),
        body=body(target, p.messages, p.output_tokens) if p.messages else None,
        keep_alive=keep_alive,
    )


def _conversation_send(
    target: Target, scenario: Scenario, planned: Sequence[Planned], tag: str
) -> loadgen.SendFn:
    histories: dict[int, list[Message]] = {}

    async def send(index: int, scheduled_ns: int) -> client.Exchange:
        p = planned[index]
        rid = f"{scenario.name}-{tag}-{index:05d}"
        if index < scenario.warmup:
            req = _prepare(target, scenario, p, rid, True)
            return await client.exchange(req, scheduled_ns=scheduled_ns, timeout_s=scenario.timeout_s)
        conversation = (index - scenario.warmup) // scenario.turns
        history = histories.setdefault(conversation, [])
        messages = [*history, ("user", p.text)]
        req = _prepare(target, scenario, dataclasses.replace(p, messages=tuple(messages)), rid, False)
        ex = await client.exchange(req, scheduled_ns=scheduled_ns, timeout_s=scenario.timeout_s)
        history += [("user", p.text), ("assistant", wire.response_text(req.api, ex.reads))]
        return ex

    return send


def measure(
    subject: runner.Subject,
    scenario: Scenario,
    built: Plan,
    *,
    on_record: Callable[[RequestRecord], None] | None = None,
    on_measured: Callable[[], None] | None = None,
    client_settings: runner.ClientSettings | None = None,
) -> RunResult:
    """Run planned traffic and return every record and the summary (as ``runner.measure``).

    Requests built ahead (lengths, datasets, shared prefixes) run through the same client as
    ``runner.measure``: its workers, connections and cores. A conversation's later turns carry the
    previous answer, so conversations run on one loop in this process.
    """
    settings = client_settings or runner.ClientSettings()
    target = with_cache(subject.target, built.cache)
    client.raise_open_file_limit(scenario.concurrency + client.FILES_BESIDES_SOCKETS)
    tag = secrets.token_hex(4)
    if scenario.turns == 1:
        prepared = [
            _prepare(target, scenario, p, f"{scenario.name}-{tag}-{i:05d}", i < scenario.warmup,
                     settings.keep_alive)
            for i, p in enumerate(built.requests)
        ]  # fmt: skip
        load = runner.run_prepared(prepared, scenario, on_record, on_measured, settings)
    else:
        send = _conversation_send(target, scenario, built.requests, tag)
        load = runner.run_measuring(loadgen.run_load(send, scenario, on_record, on_measured))
    summary = runner.summarize_run(load.records, scenario)
    # The output-length check of runner names one asked length; here each request asked its own.
    reasons = list(
        runner.invalid_reasons(dataclasses.replace(summary, output_length_misses=0), scenario, load)
    )
    done = [r for r in load.records if r.ok and not r.warmup]
    if done and summary.output_length_misses > runner.OUTPUT_MISS_LIMIT * len(done):
        reasons.insert(
            0,
            f"invalid measurement: {summary.output_length_misses} of {len(done)} requests returned another "
            "output length than each asked; the server did not honour the output length: "
            + runner.output_length_fix(target.capabilities),
        )
    extra = {"prompt_tokens_checked": built.checked, "traffic": dict(built.info)}
    return runner.run_result(subject, scenario, load, summary, reasons, extra)

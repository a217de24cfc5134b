"""Prompts of exactly N input tokens, as the server itself counts them.

Each prompt is random common English words from a seeded RNG, different
per request so prefix caches cannot flatter TTFT. The RNG is keyed by a
``salt`` (the session's salt and the test's node id, given by the plugin) and
the request's index, so no two tests of a session and no two sessions send
the same prompt, while the same salt sends the same prompts again. N counts
what the server reports as ``usage.prompt_tokens``: BOS and the chat template
included.

* With a tokenizer endpoint (``Capabilities.tokenize``: ``"vllm"`` or
  ``"llamacpp"``) every prompt is checked once with ``/tokenize`` and fixed by
  adding or removing words. Words that are one token (after a space) are
  found first, so a fix converges in a step or two. llama-server's
  ``/tokenize`` knows no chat template, so its template overhead is measured
  once with a probe request (``max_tokens: 1``) and ``usage.prompt_tokens``.
* Without one (Ollama, most hosted endpoints) the word count is calibrated
  from ``usage.prompt_tokens`` of a few probe requests; prompts are not
  checked one by one, and the achieved count is what each request's usage
  says.

Control-plane calls use ``urllib`` (no event loop). This module must not
send anything during a measured run and must never log request headers.
"""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from pytest_llmperf.errors import ConfigError, ServerError
from pytest_llmperf.measure.client import Target, request_body

_WORD_TEXT = """
    time year people way day man thing woman life child world school state family student group
    country problem hand part place case week company system program question work government
    number night point home water room mother area money story fact month lot right study book eye
    job word business issue side kind head house service friend father power hour game line end
    member law car city community name president team minute idea kid body information back parent
    face others level office door health person art war history party result change morning reason
    research girl guy moment air teacher force education foot boy age policy music market sense
    nation plan college interest death experience effect use class control care field development
    role effort rate heart drug show leader light voice wife police mind price report decision son
    view relationship town road arm difference value building action model season society tax
    director position player record paper space ground form event official matter center couple
    site project activity star table need court oil situation cost industry figure street image
    phone data picture practice piece land product doctor wall patient worker news test movie north
    love support technology step baby computer type attention film tree source organization hair
    window evidence population truth song list stage hospital bank deal foreign river open red
    green blue small large good new old great high little long young important public bad same able
    early local late hard major better best low real sure free simple clear
"""
WORDS = tuple(_WORD_TEXT.split())


@dataclass(frozen=True)
class Prompt:
    """One prompt text; ``tokens`` is the server's count when it was checked."""

    text: str
    tokens: int | None


Counter = Callable[[str], int]
"""The server's prompt-token count (BOS and template included) for a text."""


def _root(target: Target) -> str:
    url = urlsplit(target.base_url)
    path = url.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3]
    return f"{url.scheme}://{url.netloc}{path}"


def post_json(
    target: Target, path: str, body: dict[str, object], timeout_s: float = 60.0
) -> dict[str, object]:
    """POST JSON to the server and return the decoded answer; ``ServerError`` otherwise."""
    headers = {"Content-Type": "application/json", **target.headers}
    req = urllib.request.Request(_root(target) + path, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            answer = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:200].decode("utf-8", "replace")
        raise ServerError(f"POST {path} answered HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ServerError(f"POST {path} failed: {exc}") from None
    if not isinstance(answer, dict):
        raise ServerError(f"POST {path} answered {type(answer).__name__}, not a JSON object")
    return answer


def _chat(target: Target) -> bool:
    return target.capabilities.api in ("chat", "ollama-chat")


def probe_prompt_tokens(target: Target, text: str) -> int:
    """``usage.prompt_tokens`` (Ollama: ``prompt_eval_count``) of a one-token request."""
    body = request_body(target, text, 1)
    body["stream"] = False
    body.pop("stream_options", None)
    path = {
        "completions": "/v1/completions",
        "chat": "/v1/chat/completions",
        "ollama-generate": "/api/generate",
        "ollama-chat": "/api/chat",
    }[target.capabilities.api]
    answer = post_json(target, path, body)
    usage = answer.get("usage")
    count = usage.get("prompt_tokens") if isinstance(usage, dict) else answer.get("prompt_eval_count")
    if not isinstance(count, int):
        raise ServerError(f"the server reported no prompt token count for a probe on {path}")
    return count


def tokenizer_counter(target: Target) -> Counter | None:
    """A ``Counter`` backed by ``/tokenize``, or ``None`` without that endpoint."""
    dialect = target.capabilities.tokenize
    if dialect == "vllm":

        def count_vllm(text: str) -> int:
            body: dict[str, object] = {"model": target.model}
            if _chat(target):
                body.update(messages=[{"role": "user", "content": text}], add_generation_prompt=True)
            else:
                body["prompt"] = text
            answer = post_json(target, "/tokenize", body)
            n = answer.get("count")
            tokens = answer.get("tokens")
            return n if isinstance(n, int) else len(tokens) if isinstance(tokens, list) else -1

        return count_vllm
    if dialect == "llamacpp":

        def count_raw(text: str) -> int:
            tokens = post_json(target, "/tokenize", {"content": text, "add_special": True}).get("tokens")
            return len(tokens) if isinstance(tokens, list) else -1

        if not _chat(target):
            return count_raw
        probe = "the model"
        overhead = probe_prompt_tokens(target, probe) - count_raw(probe)
        return lambda text: count_raw(text) + overhead
    return None


def single_token_words(count: Counter, candidates: Sequence[str] = WORDS) -> list[str]:
    """The candidates that are one token after a space, found by halving.

    A group of k words that adds exactly k tokens holds only one-token words
    (each word is at least one token), so most of the list is checked in a
    few calls and only groups with a longer word are split further.
    """
    anchor = "the"
    base = count(anchor)
    found: list[str] = []
    stack = [list(candidates)]
    while stack:
        group = stack.pop()
        if count(" ".join([anchor, *group])) - base == len(group):
            found.extend(group)
        elif len(group) > 1:
            mid = len(group) // 2
            stack += [group[:mid], group[mid:]]
    return sorted(found) or list(candidates)


def fit_prompt(
    n_tokens: int, pool: Sequence[str], rng: random.Random, count: Counter, overhead: int
) -> Prompt:
    """Random words adjusted until the server counts exactly ``n_tokens``."""
    words = [rng.choice(pool) for _ in range(max(n_tokens - overhead, 0))]
    return _adjust(words, n_tokens, pool, rng, count, fit=_POOL_WORDS)


@dataclass(frozen=True)
class _Fit:
    """How ``_adjust`` closes in on a length: the counts it may ask for, the words it cuts
    for an excess of ``n`` tokens, and what its error says it tried to do."""

    tries: int
    cut: Callable[[int], int]
    what: str


# Pool words are one token each: cut exactly the excess.
_POOL_WORDS = _Fit(tries=12, cut=lambda excess: excess, what="build a prompt of")
# Dataset words may be several tokens each: cut by halves of the excess, at least one word.
_DATASET_WORDS = _Fit(tries=40, cut=lambda excess: max(excess // 2, 1), what="fit a dataset prompt to")


def _adjust(
    words: list[str], n_tokens: int, pool: Sequence[str], rng: random.Random, count: Counter, *, fit: _Fit
) -> Prompt:
    """``words`` padded with one-token words of ``pool``, or cut by ``fit.cut(excess)`` words from
    the end, until the server counts exactly ``n_tokens``; ``ServerError`` after ``fit.tries`` counts."""
    got = -1
    for _ in range(fit.tries):
        got = count(" ".join(words))
        diff = n_tokens - got
        if diff == 0:
            return Prompt(" ".join(words), got)
        if diff > 0:
            words += [rng.choice(pool) for _ in range(diff)]
        else:
            del words[max(len(words) - fit.cut(-diff), 0) :]
    raise ServerError(f"could not {fit.what} exactly {n_tokens} tokens (the server counted {got})")


def _check_reachable(n_tokens: int, overhead: int) -> None:
    if n_tokens < overhead:
        raise ConfigError(
            f"input_tokens={n_tokens} is below the {overhead} tokens the server adds to every prompt "
            f"(BOS and chat template); ask for at least {overhead}"
        )


_POOLS: dict[tuple[str, str, str, str], list[str]] = {}


def word_pool(target: Target, counter: Counter) -> list[str]:
    """The one-token words of ``target``'s tokenizer (found once per server and API)."""
    key = (target.base_url, target.model, str(target.capabilities.tokenize), target.capabilities.api)
    if key not in _POOLS:
        _POOLS[key] = single_token_words(counter)
    return _POOLS[key]


def build_prompts(target: Target, n_tokens: int, count: int, seed: int, salt: str = "") -> list[Prompt]:
    """``count`` different prompts of ``n_tokens`` input tokens for ``target``.

    The words of prompt ``i`` come from ``random.Random(f"{salt}/{seed}/{i}")``.
    """
    return build_prompts_of(target, [n_tokens] * count, seed, salt)


def build_prompts_of(target: Target, lengths: Sequence[int], seed: int, salt: str = "") -> list[Prompt]:
    """One fresh prompt per entry of ``lengths``, prompt ``i`` of exactly ``lengths[i]`` tokens.

    Same RNG keys as ``build_prompts``, so a fixed length gives the same prompts.
    """
    counter = tokenizer_counter(target)
    stem = f"{salt}/{seed}"
    if counter is None:
        return _calibrated_prompts(target, lengths, stem)
    overhead = counter("")
    if lengths:
        _check_reachable(min(lengths), overhead)
    pool = word_pool(target, counter)
    return [
        fit_prompt(n, pool, random.Random(f"{stem}/{i}"), counter, overhead) for i, n in enumerate(lengths)
    ]


def fit_text(text: str, n_tokens: int, pool: Sequence[str], rng: random.Random, count: Counter) -> Prompt:
    """``text`` cut or padded to exactly ``n_tokens``: its words first, then one-token words.

    Cuts words from the end while the server counts too many; pads with words
    of ``pool`` while it counts too few (a dataset's prompt at an asked length).
    """
    return _adjust(text.split(), n_tokens, pool, rng, count, fit=_DATASET_WORDS)


def words_for(n_tokens: int, small: tuple[int, int], large: tuple[int, int]) -> int:
    """Words needed for ``n_tokens`` from two probes ``(words, tokens)``: a line through both."""
    (w1, t1), (w2, t2) = small, large
    per_word = (t2 - t1) / (w2 - w1) if w2 != w1 else 1.0
    per_word = per_word if per_word > 0 else 1.0
    return max(round(w1 + (n_tokens - t1) / per_word), 0)


def _calibrated_prompts(target: Target, lengths: Sequence[int], stem: str) -> list[Prompt]:
    rng = random.Random(f"{stem}/probe")  # the probes are prompts the server sees, salted too

    def probe(words: int) -> tuple[int, int]:
        return words, probe_prompt_tokens(target, " ".join(rng.choice(WORDS) for _ in range(words)))

    small = probe(8)
    overhead = small[1] - small[0]
    distinct = sorted(set(lengths))
    if not distinct:
        return []
    _check_reachable(distinct[0], overhead)
    large = probe(max(distinct[-1] - overhead, 16))
    words_of = {n: words_for(n, small, large) for n in distinct}
    if len(distinct) == 1:
        # One length: check the line's answer once, and correct it from that probe.
        n_tokens, words = distinct[0], words_of[distinct[0]]
        if large[0] != words:
            check = probe(words)
            if check[1] != n_tokens and check[0] != small[0]:
                words_of[n_tokens] = words_for(n_tokens, small, check)
    prompts = []
    for i, n_tokens in enumerate(lengths):
        r = random.Random(f"{stem}/{i}")
        prompts.append(Prompt(" ".join(r.choice(WORDS) for _ in range(words_of[n_tokens])), None))
    return prompts

"""Response parsing on hand-built reads: framing, stamps, token counts, failures."""

from __future__ import annotations

import json

import pytest

from pytest_llmperf.measure.wire import Read, apportion, parse_response

HEAD_CHUNKED = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def chunk(payload: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(payload), payload)


def sse(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def text_event(text: str, usage: dict[str, int] | None = None) -> bytes:
    obj: dict[str, object] = {"choices": [{"index": 0, "text": text, "finish_reason": None}]}
    if usage is not None:
        obj["usage"] = usage
    return sse(obj)


def usage_event(prompt: int, completion: int) -> bytes:
    return sse({"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion}})


def stream(*events: bytes, at: int = 100, step: int = 10, end: bool = True) -> list[Read]:
    reads: list[Read] = [(at, HEAD_CHUNKED)]
    for i, ev in enumerate(events):
        reads.append((at + (i + 1) * step, chunk(ev)))
    if end:
        reads.append((at + (len(events) + 1) * step, chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"))
    return reads


def test_one_token_per_chunk_from_usage() -> None:
    p = parse_response("completions", stream(text_event(" a"), text_event(" b"), usage_event(9, 2)), 999, 2)
    assert p.error is None
    assert p.status == 200
    assert p.chunk_ns == (110, 120)
    assert p.chunk_tokens == (1, 1)
    assert p.chunk_tokens_source == "one_per_chunk"
    assert (p.input_tokens, p.output_tokens) == (9, 2)
    assert p.end_ns == 140  # the read that brought [DONE], not EOF


def test_cumulative_usage_gives_exact_multi_token_chunks() -> None:
    events = (
        text_event(" a", {"prompt_tokens": 9, "completion_tokens": 1}),
        text_event(" b c d", {"prompt_tokens": 9, "completion_tokens": 4}),
        text_event(" e f", {"prompt_tokens": 9, "completion_tokens": 6}),
        usage_event(9, 6),
    )
    p = parse_response("completions", stream(*events), 999, 6)
    assert p.chunk_tokens == (1, 3, 2)
    assert p.chunk_tokens_source == "usage"
    assert p.output_tokens == 6


def test_usage_total_spread_by_text_length() -> None:
    events = (text_event(" a"), text_event(" bbbbbb"), text_event(" cc"), usage_event(9, 7))
    p = parse_response("completions", stream(*events), 999, 8)
    assert p.chunk_tokens_source == "estimated"
    assert sum(p.chunk_tokens) == 7
    assert p.chunk_tokens == (1, 4, 2)
    assert p.output_tokens == 7  # from usage, never from the 3 chunks


def test_apportion_largest_remainder() -> None:
    assert apportion(7, [2, 7, 3]) == (1, 4, 2)
    assert apportion(2, [1, 1, 1]) == (1, 1, 0)
    assert apportion(5, [0, 0]) == (3, 2)
    assert apportion(0, []) == ()
    assert apportion(3, [10, 0, 0]) == (1, 1, 1)


def test_event_split_across_reads_is_stamped_when_it_completes() -> None:
    body = chunk(text_event(" a")) + chunk(text_event(" b")) + chunk(usage_event(3, 2))
    body += chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
    raw = HEAD_CHUNKED + body
    cut1 = len(HEAD_CHUNKED) + 20  # inside the first event
    cut2 = raw.index(b"\n\n", cut1) + 2  # the first event ends with this read
    reads = [(100, raw[:cut1]), (200, raw[cut1:cut2]), (300, raw[cut2 : cut2 + 5]), (400, raw[cut2 + 5 :])]
    p = parse_response("completions", reads, 999, 2)
    assert p.error is None
    assert p.chunk_ns == (200, 400)


def test_chat_deltas_and_role_chunk() -> None:
    role = sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    tok = sse({"choices": [{"index": 0, "delta": {"content": " hi"}}]})
    p = parse_response("chat", stream(role, tok, tok, usage_event(5, 2)), 999, 2)
    assert p.error is None
    assert p.chunk_ns == (120, 130)  # the empty role chunk is not a token


def test_content_length_and_crlf_events() -> None:
    body = b'data: {"choices":[{"text":"x"}]}\r\n\r\n'
    body += b'data: {"choices":[],"usage":{"completion_tokens":1}}\r\n\r\n'
    body += b"data: [DONE]\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body)
    p = parse_response("completions", [(5, head + body)], 9, 1)
    assert p.error is None
    assert (p.chunk_ns, p.output_tokens, p.end_ns) == ((5,), 1, 5)


def test_ndjson_generate() -> None:
    lines = [
        {"model": "m", "response": " a", "done": False},
        {"model": "m", "response": " b", "done": False},
        {"model": "m", "response": "", "done": True, "prompt_eval_count": 12, "eval_count": 2},
    ]
    reads: list[Read] = [(10, b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n\r\n")]
    reads += [(20 + i, json.dumps(line).encode() + b"\n") for i, line in enumerate(lines)]
    p = parse_response("ollama-generate", reads, 99, 2)
    assert p.error is None
    assert (p.chunk_ns, p.chunk_tokens, p.input_tokens, p.output_tokens, p.end_ns) == (
        (20, 21),
        (1, 1),
        12,
        2,
        22,
    )


def test_no_usage_leaves_counts_unknown() -> None:
    p = parse_response("completions", stream(text_event(" a"), text_event(" b")), 999, 2)
    assert p.error is None
    assert (p.output_tokens, p.chunk_tokens) == (None, ())


def http_error(status: int, body: bytes) -> list[Read]:
    head = f"HTTP/1.1 {status} X\r\ncontent-length: {len(body)}\r\n\r\n".encode()
    return [(1, head + body)]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # OpenAI, and vLLM since 0.8
        (b'{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}',
         "HTTP 429: Rate limit reached"),
        # llama-server, rejecting a request longer than a slot's context
        (b'{"error":{"code":400,"message":"request (301 tokens) exceeds the available context size '
         b'(256 tokens), try increasing it","type":"exceed_context_size_error","n_prompt_tokens":301}}',
         "HTTP 429: request (301 tokens) exceeds the available context size (256 tokens), try increasing it"),
        (b'{"object":"error","message":"maximum context length is 2048","type":"BadRequestError"}',
         "HTTP 429: maximum context length is 2048"),  # older vLLM
        (b'{"detail":"Not Found"}', "HTTP 429: Not Found"),  # FastAPI
        (b'{"error":"model \'x\' not found"}', "HTTP 429: model 'x' not found"),  # Ollama
        (b"<html>Too Many Requests</html>", "HTTP 429: <html>Too Many Requests</html>"),
        (b"", "HTTP 429 (empty body)"),
    ],
)  # fmt: skip
def test_an_http_error_carries_the_servers_message(body: bytes, message: str) -> None:
    p = parse_response("completions", http_error(429, body), 999, 4)
    assert (p.status, p.error) == (429, message)


@pytest.mark.parametrize(
    ("reads", "api", "message"),
    [
        ([], "completions", "connection closed before any response"),
        ([(1, b"HTTP/1.1 200 OK\r\ncontent-")], "completions", "incomplete HTTP response"),
        (
            [(1, b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 11\r\n\r\n{\"x\":\"bad\"}")],
            "completions",
            'HTTP 500: {"x":"bad"}',
        ),
        (stream(text_event(" a"), b'data: {"choices":[\n\n'), "completions", "malformed SSE event #2"),
        (stream(text_event(" a"), end=False), "completions", "stream truncated: no [DONE] after 1 content"),
        (stream(sse({"error": {"message": "busy"}})), "completions", "server error in stream: busy"),
        (stream(usage_event(1, 0)), "completions", "stream ended with no output tokens"),
        (stream(text_event(" a"), usage_event(3, 5)), "completions", "output longer than max_tokens: server"),
        ([(1, b"HTTP/1.1 200 OK\r\n\r\n"), (2, b'{"response":"a","done":false}\n{"respo')], "ollama-generate",
         "stream truncated: no done:true line after 1 content chunks"),
        ([(1, b"HTTP/1.1 200 OK\r\n\r\n"), (2, b'{"response":"a","done":false\n')], "ollama-generate",
         "malformed NDJSON line #1"),
    ],
)  # fmt: skip
def test_failures_are_error_records(reads: list[Read], api: str, message: str) -> None:
    p = parse_response(api, reads, 999, 4)  # type: ignore[arg-type]
    assert p.error is not None
    assert p.error.startswith(message), p.error

"""The streaming client against the deterministic server: every API, every fault.

Latency checks here are causal only (the server cannot write a token before
it received the request; the client cannot read it before it was written),
so they hold on any machine, however loaded.
"""

from __future__ import annotations

import asyncio
import resource
import time
from pathlib import Path

import pytest

from pytest_llmperf.measure import client
from pytest_llmperf.measure.client import Target
from pytest_llmperf.records import Api, Capabilities, RequestRecord
from pytest_llmperf.servers.base import free_port
from pytest_llmperf.testing.harness import DetServer, running_detserver

APIS: list[Api] = ["completions", "chat", "ollama-generate", "ollama-chat"]
PROMPT = "one two three four five"  # 5 words: 6 tokens with BOS, 9 through the chat template


def send(
    target: Target, request_id: str = "req-1", max_tokens: int = 8, timeout_s: float = 30.0
) -> RequestRecord:
    prepared = client.prepare(
        target,
        PROMPT,
        client.RequestSpec(request_id=request_id, scenario="t", input_tokens=6, max_tokens=max_tokens),
    )
    return asyncio.run(client.send(prepared, scheduled_ns=time.perf_counter_ns(), timeout_s=timeout_s))


@pytest.mark.parametrize("usage_per_chunk", [False, True])
@pytest.mark.parametrize("api", APIS)
def test_stream_is_parsed_and_joined_to_server_stamps(
    det: DetServer, api: Api, usage_per_chunk: bool
) -> None:
    rid = f"{api}-{usage_per_chunk}"
    r = send(det.target(api, usage_per_chunk=usage_per_chunk), request_id=rid)
    assert r.error is None, r.error
    assert r.status == 200
    assert r.output_tokens == 8
    assert r.input_tokens == (9 if "chat" in api else 6)
    assert len(r.chunk_ns) == 8
    assert r.chunk_tokens == (1,) * 8
    ollama = api.startswith("ollama")
    assert r.chunk_tokens_source == ("usage" if usage_per_chunk and not ollama else "one_per_chunk")
    assert len(r.itl_ns) == 7
    stamp = det.stamps()[rid]  # the x-request-id header reached the server
    assert stamp["tokens"] == 8
    assert r.sent_ns <= stamp["recv_ns"] <= stamp["first_ns"] <= r.chunk_ns[0]
    assert stamp["first_ns"] - stamp["recv_ns"] >= 20_000_000  # the server's TTFT is a floor
    assert r.ttft_ns is not None
    assert r.ttft_ns >= 20_000_000
    assert r.chunk_ns == tuple(sorted(r.chunk_ns))
    assert r.end_ns >= r.chunk_ns[-1]


@pytest.mark.parametrize(
    ("api", "usage_per_chunk", "source", "tokens"),
    [
        ("completions", True, "usage", (3, 3, 2)),
        ("chat", True, "usage", (3, 3, 2)),
        ("completions", False, "estimated", None),
        ("ollama-generate", False, "estimated", None),
    ],
)
def test_multi_token_chunks(
    tmp_path: Path, api: Api, usage_per_chunk: bool, source: str, tokens: tuple[int, ...] | None
) -> None:
    with running_detserver(tmp_path, ttft_ms=5, itl_ms=1, args=["--chunk-tokens", "3"]) as server:
        r = send(server.target(api, usage_per_chunk=usage_per_chunk))
    assert r.error is None, r.error
    assert r.output_tokens == 8  # from usage: three chunks carried eight tokens
    assert len(r.chunk_ns) == 3
    assert r.chunk_tokens_source == source
    assert sum(r.chunk_tokens) == 8
    assert min(r.chunk_tokens) >= 1
    if tokens is not None:
        assert r.chunk_tokens == tokens
    assert len(r.itl_ns) == 7


@pytest.mark.parametrize(
    ("fault", "api", "expected"),
    [
        ("http500", "completions", "HTTP 500: "),
        ("http500", "ollama-chat", "HTTP 500: detserver: injected fault http500"),
        # OpenAI's error bodies: the status and the server's own message, not the JSON around it.
        (
            "http429",
            "completions",
            "HTTP 429: Rate limit reached for requests per min (RPM): Limit 3, Used 3",
        ),
        ("http503", "chat", "HTTP 503: The engine is currently overloaded, please try again later"),
        ("http401", "ollama-generate", "HTTP 401: Incorrect API key provided."),
        ("malformed", "completions", "malformed SSE event #5"),
        ("malformed", "chat", "malformed SSE event #6"),  # after the role chunk
        ("malformed", "ollama-generate", "malformed NDJSON line #5"),
        ("truncate", "completions", "stream truncated: no [DONE] after 4 content chunks, body incomplete"),
        ("truncate", "ollama-generate", "stream truncated: no done:true line after 4 content chunks"),
        ("ignore-max-tokens", "completions", "output longer than max_tokens: server sent 10 tokens, 8 were"),
        ("ignore-max-tokens", "ollama-generate", "output longer than max_tokens: server sent 10 tokens"),
    ],
)
def test_faults_become_error_records(tmp_path: Path, fault: str, api: Api, expected: str) -> None:
    with running_detserver(tmp_path, ttft_ms=5, itl_ms=1, fault=fault) as server:
        r = send(server.target(api))
        assert server.alive()
    assert not r.ok
    assert r.error is not None
    assert r.error.startswith(expected), r.error
    assert r.ttft_ns is None


def test_early_eos_is_a_short_answer_not_an_error(tmp_path: Path) -> None:
    with running_detserver(tmp_path, ttft_ms=5, itl_ms=1, fault="early-eos") as server:
        r = send(server.target("completions"))
    assert r.error is None
    assert r.output_tokens == 4  # the run-level check flags it as a length miss


@pytest.mark.parametrize("fault", ["hang", "slow"])
def test_timeout_closes_the_request(tmp_path: Path, fault: str) -> None:
    with running_detserver(tmp_path, ttft_ms=5, itl_ms=1, fault=fault) as server:
        started = time.monotonic()
        r = send(server.target("completions"), timeout_s=0.5)
        elapsed = time.monotonic() - started
    assert r.error == "timeout after 0.5 s"
    assert elapsed < 10  # it did not wait for the slow stream's 8 s
    if fault == "slow":
        assert len(r.chunk_ns) >= 1  # what arrived is kept for the request log


def test_server_that_dies_gives_connection_errors(tmp_path: Path) -> None:
    with running_detserver(tmp_path, ttft_ms=5, itl_ms=1, fault="die-after=1") as server:
        first = send(server.target("completions"), request_id="a")
        server.process.proc.wait(timeout=10)
        second = send(server.target("completions"), request_id="b")
    assert first.ok
    assert second.error is not None
    assert second.error.startswith("connection failed:")


def test_nothing_listening() -> None:
    target = Target(f"http://127.0.0.1:{free_port()}", "m", Capabilities("completions", True, True))
    r = send(target)
    assert r.error is not None
    assert r.error.startswith("connection failed:")
    assert r.sent_ns == r.end_ns


def test_headers_are_sent_but_never_kept(det: DetServer) -> None:
    target = det.target("completions", headers={"Authorization": "Bearer sekrit"})
    prepared = client.prepare(
        target, PROMPT, client.RequestSpec(request_id="h", scenario="t", input_tokens=6, max_tokens=2)
    )
    assert b"Authorization: Bearer sekrit\r\n" in prepared.payload
    assert b"x-request-id: h\r\n" in prepared.payload
    assert b"Connection: keep-alive\r\n" in prepared.payload
    assert "sekrit" not in repr(target)
    assert "sekrit" not in repr(prepared)
    r = send(target, request_id="h", max_tokens=2)
    assert r.ok
    assert "sekrit" not in repr(r)


def test_request_bodies_ask_for_exact_lengths(det: DetServer) -> None:
    body = client.request_body(det.target("completions", usage_per_chunk=True), "p", 64)
    assert body["max_tokens"] == 64
    assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert body["temperature"] == 0
    ollama = client.request_body(det.target("ollama-chat"), "p", 64)
    assert ollama["options"] == {"num_predict": 64, "temperature": 0}
    assert ollama["messages"] == [{"role": "user", "content": "p"}]


def test_open_file_limit_is_raised_when_needed() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(soft + 16, hard) if hard != resource.RLIM_INFINITY else soft + 16
    assert client.raise_open_file_limit(want) >= want
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= want


def test_a_concurrency_this_process_cannot_hold_is_named(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        assert client.concurrency_problem(8) is None
        if hard != resource.RLIM_INFINITY:
            problem = client.concurrency_problem(hard)  # raises the soft limit to the hard one first
            assert problem == (
                f"{hard} requests in flight need about {hard + 64} open files, but this process may open "
                f"at most {hard} (ulimit -Hn); lower the concurrency to {hard - 64} or raise the hard limit"
            )
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    ports = tmp_path / "ip_local_port_range"
    ports.write_text("32768\t60999\n")
    assert client.local_port_count(str(ports)) == 28232
    assert client.local_port_count(str(tmp_path / "missing")) is None


# -- keep-alive connections -----------------------------------------------------------------------


def exchanges(
    target: Target, count: int, *, keep_alive: bool = True, max_tokens: int = 4
) -> tuple[list[RequestRecord], client.Connections]:
    """``count`` requests one after another on one run's connections."""
    connections = client.Connections(keep_alive=keep_alive)

    async def run() -> list[RequestRecord]:
        out = []
        for i in range(count):
            spec = client.RequestSpec(f"ka-{keep_alive}-{i}", "t", input_tokens=6, max_tokens=max_tokens)
            req = client.prepare(target, PROMPT, spec, keep_alive=keep_alive)
            ex = await connections.exchange(req, scheduled_ns=time.perf_counter_ns(), timeout_s=30)
            out.append(ex.record())
        connections.close()
        return out

    return asyncio.run(run()), connections


@pytest.mark.parametrize("api", APIS)
def test_a_stream_reuses_one_connection(det: DetServer, api: Api) -> None:
    records, connections = exchanges(det.target(api), 3)
    assert [r.error for r in records] == [None, None, None]
    assert [r.output_tokens for r in records] == [4, 4, 4]
    assert connections.opened == 1  # every request after the first went on the same connection
    assert connections.retries == 0
    stamps = det.stamps()
    for r in records:
        s = stamps[r.request_id]
        assert r.sent_ns <= s["recv_ns"] <= s["first_ns"] <= r.chunk_ns[0]  # TTFT is this request's only


def test_per_request_connections_are_opened_and_closed_each_time(det: DetServer) -> None:
    records, connections = exchanges(det.target("completions"), 3, keep_alive=False)
    assert all(r.ok for r in records)
    assert connections.opened == 3
    spec = client.RequestSpec(request_id="x", scenario="t", input_tokens=6, max_tokens=2)
    req = client.prepare(det.target(), PROMPT, spec, keep_alive=False)
    assert b"Connection: close\r\n" in req.payload


def test_a_connection_the_server_says_it_will_close_is_not_reused(tmp_path: Path) -> None:
    args = ["--max-requests-per-connection", "2"]
    with running_detserver(tmp_path, ttft_ms=5, itl_ms=1, args=args) as server:
        records, connections = exchanges(server.target("completions"), 5)
    assert all(r.ok for r in records)
    assert connections.opened == 3  # requests 1-2, 3-4 and 5, as the server said
    assert connections.retries == 0


def test_a_request_lost_on_a_closing_connection_goes_again_and_is_counted(tmp_path: Path) -> None:
    with running_detserver(tmp_path, ttft_ms=20, itl_ms=1, fault="drop-reused") as server:
        records, connections = exchanges(server.target("completions"), 3)
        stamps = server.stamps()
    assert [r.error for r in records] == [None, None, None]
    assert connections.retries == 2  # requests 2 and 3 each met a connection closed under them
    assert connections.opened == 3
    assert len(stamps) == 3  # the lost attempts never reached a generation: each request ran once
    for r in records:
        s = stamps[r.request_id]
        # TTFT counts from the send the server answered; the lost attempt is before sent_ns.
        assert r.scheduled_ns <= r.sent_ns <= s["recv_ns"] <= s["first_ns"] <= r.chunk_ns[0]


class FakeTransport:
    def __init__(self) -> None:
        self.closed = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def feed(pieces: list[bytes]) -> tuple[list[bool], client.Stream]:
    """Feed ``pieces`` to a connection's protocol one read at a time; whether it had ended after each."""

    async def run() -> tuple[list[bool], client.Stream]:
        proto = client.Stream()
        proto.connection_made(FakeTransport())  # type: ignore[arg-type]
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        proto.begin(done)
        ended = []
        for piece in pieces:
            proto.data_received(piece)
            ended.append(done.done())
        return ended, proto

    return asyncio.run(run())


HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
EVENT = b'data: {"choices":[{"text":" a"}]}\n\n'
CHUNK = b"%x\r\n%b\r\n" % (len(EVENT), EVENT)


@pytest.mark.parametrize(
    ("pieces", "ends_at"),
    [
        ([HEAD, CHUNK, CHUNK + b"0\r\n\r\n"], 2),
        ([HEAD + CHUNK, CHUNK, b"0\r\n\r\n"], 2),
        ([HEAD, CHUNK, b"0\r\n", b"\r\n"], 3),  # the terminator split over two reads
        ([HEAD, CHUNK, b"0\r", b"\n\r\n"], 3),
        ([HEAD, CHUNK[:10], CHUNK[10:], b"0\r\nx-trailer: 1\r\n\r\n"], 3),  # a trailer after the last chunk
        ([HEAD[:20], HEAD[20:] + CHUNK + b"0\r\n\r\n"], 1),  # the head split over two reads
    ],
)
def test_the_end_of_a_chunked_response_is_found_in_any_split(pieces: list[bytes], ends_at: int) -> None:
    ended, proto = feed(pieces)
    assert ended == [i >= ends_at for i in range(len(pieces))]
    assert proto.complete
    assert proto.keep
    assert proto.end_ns == proto.reads[ends_at][0]  # the end is stamped with the read that ended it


def test_events_ending_in_crlf_do_not_end_the_response_early() -> None:
    crlf = b'data: {"choices":[{"text":" a"}]}\r\n\r\n'
    chunk = b"%x\r\n%b\r\n" % (len(crlf), crlf)
    ended, _ = feed([HEAD, chunk, chunk, chunk, b"0\r\n\r\n"])
    assert ended == [False, False, False, False, True]


def test_content_length_and_connection_close_responses() -> None:
    body = b'{"error":{"message":"slow down"}}'
    head = b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: %d\r\n\r\n" % len(body)
    ended, proto = feed([head + body[:5], body[5:]])
    assert ended == [False, True]
    assert proto.keep
    closing = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"
    ended, proto = feed([closing])
    assert ended == [True]
    assert not proto.keep  # the server said it closes: not reused
    ended, proto = feed([b"HTTP/1.0 200 OK\r\n\r\nno length", b" at all"])
    assert ended == [False, False]  # read to EOF
    assert not proto.keep

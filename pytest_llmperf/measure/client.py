"""One streamed LLM request over a raw asyncio connection, stamped per read.

The hot path is an ``asyncio.Protocol`` whose ``data_received`` only appends
``(time.perf_counter_ns(), bytes)``: no HTTP parsing, no JSON, no allocation
beyond the tuple while tokens arrive, so the stamps carry the least client
delay we can get from Python. Each request gets its own connection with
``Connection: close`` (no pool, so no hidden client-side queue) and ends at
EOF. Only after it ends does :mod:`pytest_llmperf.measure.wire` turn the bytes into a
``RequestRecord``.

This module must not raise for anything the server does: every failure
(refused connection, HTTP error, broken stream, timeout) is a record with its
``error`` text. It must never log or store ``Target.headers``, which may hold
credentials.
"""

from __future__ import annotations

import asyncio
import json
import resource
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pytest_llmperf.measure.wire import Parsed, Read, parse_response
from pytest_llmperf.records import Api, Capabilities, RequestRecord

_now = time.perf_counter_ns

PATHS: dict[Api, str] = {
    "completions": "/v1/completions",
    "chat": "/v1/chat/completions",
    "ollama-generate": "/api/generate",
    "ollama-chat": "/api/chat",
}


@dataclass(frozen=True)
class Target:
    """Where and how to send generation requests."""

    base_url: str
    model: str
    capabilities: Capabilities
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Prepared:
    """A request ready to go: the whole byte string is built before connecting."""

    request_id: str
    scenario: str
    api: Api
    host: str
    port: int
    tls: bool
    payload: bytes = field(repr=False)
    input_tokens_requested: int
    output_tokens_requested: int
    warmup: bool = False


def request_body(target: Target, prompt: str, max_tokens: int) -> dict[str, object]:
    """The JSON body for one generation request with an exact output length."""
    caps = target.capabilities
    body: dict[str, object] = {"model": target.model}
    if caps.api in ("chat", "ollama-chat"):
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    body["stream"] = True
    if caps.api.startswith("ollama"):
        options: dict[str, object] = {"num_predict": max_tokens, "temperature": 0}
        extra = dict(caps.extra_body)
        extra_options = extra.pop("options", None)
        if isinstance(extra_options, Mapping):
            options.update(extra_options)
        body["options"] = options
        body.update(extra)
        return body
    body["max_tokens"] = max_tokens
    stream_options: dict[str, object] = {"include_usage": True}
    if caps.usage_per_chunk:
        stream_options["continuous_usage_stats"] = True
    body["stream_options"] = stream_options
    body["temperature"] = 0
    body.update(caps.extra_body)
    return body


def prepare(
    target: Target,
    prompt: str,
    *,
    request_id: str,
    scenario: str,
    input_tokens: int,
    max_tokens: int,
    warmup: bool = False,
    body: Mapping[str, object] | None = None,
) -> Prepared:
    """Build the request bytes (HTTP/1.1, ``Connection: close``) for one request.

    ``body`` replaces the JSON body ``request_body`` would build (a conversation's
    history, a dataset's chat messages); ``prompt`` is then unused.
    """
    api = target.capabilities.api
    url = urlsplit(target.base_url)
    tls = url.scheme == "https"
    host = url.hostname or "127.0.0.1"
    port = url.port or (443 if tls else 80)
    prefix = url.path.rstrip("/")
    path = PATHS[api]
    if prefix.endswith("/v1") and path.startswith("/v1/"):
        prefix = prefix[: -len("/v1")]
    payload = body if body is not None else request_body(target, prompt, max_tokens)
    encoded = json.dumps(payload, separators=(",", ":")).encode()
    host_header = host if url.port is None else f"{host}:{port}"
    if ":" in host and not host.startswith("["):
        host_header = f"[{host}]" + (f":{port}" if url.port is not None else "")
    lines = [
        f"POST {prefix}{path} HTTP/1.1",
        f"Host: {host_header}",
        "User-Agent: pytest-llmperf",
        "Content-Type: application/json",
        "Accept: application/x-ndjson" if api.startswith("ollama") else "Accept: text/event-stream",
        f"Content-Length: {len(encoded)}",
        "Connection: close",
        f"x-request-id: {request_id}",
    ]
    lines.extend(f"{k}: {v}" for k, v in target.headers.items())
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return Prepared(
        request_id=request_id,
        scenario=scenario,
        api=api,
        host=host,
        port=port,
        tls=tls,
        payload=head + encoded,
        input_tokens_requested=input_tokens,
        output_tokens_requested=max_tokens,
        warmup=warmup,
    )


class _Stream(asyncio.Protocol):
    """Keeps each read with its arrival stamp; nothing else on the hot path."""

    __slots__ = ("done", "end_ns", "error", "reads", "timed_out", "transport")

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.reads: list[Read] = []
        self.done = done
        self.end_ns = 0
        self.error: BaseException | None = None
        self.timed_out = False
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reads.append((_now(), data))

    def eof_received(self) -> bool | None:
        return None  # let the transport close; connection_lost ends the request

    def connection_lost(self, exc: Exception | None) -> None:
        self.end_ns = _now()
        self.error = exc
        if not self.done.done():
            self.done.set_result(None)

    def expire(self) -> None:
        self.timed_out = True
        if self.transport is not None:
            self.transport.abort()  # type: ignore[attr-defined]


_ssl_context: ssl.SSLContext | None = None


def _tls() -> ssl.SSLContext:
    global _ssl_context  # noqa: PLW0603 - one verified context, built on first https use
    if _ssl_context is None:
        _ssl_context = ssl.create_default_context()
    return _ssl_context


@dataclass(frozen=True)
class Exchange:
    """One request's raw outcome: its stamped reads, not yet parsed.

    ``record()`` does the parsing; the load generator calls it off the
    critical path, so the next request is never held back by it.
    """

    req: Prepared
    scheduled_ns: int
    sent_ns: int
    eof_ns: int
    reads: list[Read] = field(repr=False)
    timeout_s: float
    timed_out: bool = False
    failure: str | None = None
    lost: str | None = None

    def record(self) -> RequestRecord:
        req = self.req
        if self.failure is not None:
            parsed = Parsed(status=None, end_ns=self.eof_ns, error=self.failure)
        else:
            parsed = parse_response(req.api, self.reads, self.eof_ns, req.output_tokens_requested)
        error = parsed.error
        if self.timed_out:
            error = f"timeout after {self.timeout_s:g} s"
        elif error is not None and self.lost is not None and parsed.status == 200:
            error = f"{error} ({self.lost})"
        return RequestRecord(
            request_id=req.request_id,
            scenario=req.scenario,
            input_tokens_requested=req.input_tokens_requested,
            output_tokens_requested=req.output_tokens_requested,
            scheduled_ns=self.scheduled_ns,
            sent_ns=self.sent_ns,
            end_ns=parsed.end_ns,
            chunk_ns=parsed.chunk_ns,
            chunk_tokens=parsed.chunk_tokens,
            chunk_tokens_source=parsed.chunk_tokens_source,
            input_tokens=parsed.input_tokens,
            output_tokens=parsed.output_tokens,
            status=parsed.status,
            error=error,
            warmup=req.warmup,
        )


async def exchange(req: Prepared, *, scheduled_ns: int, timeout_s: float) -> Exchange:
    """Send one prepared request and collect its stamped reads; never raises for I/O.

    ``timeout_s`` bounds the whole request, connecting included; when it
    expires the connection is aborted and the record will say so.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    done: asyncio.Future[None] = loop.create_future()
    failure: str | None = None
    try:
        transport, proto = await asyncio.wait_for(
            loop.create_connection(
                lambda: _Stream(done),
                req.host,
                req.port,
                ssl=_tls() if req.tls else None,
                server_hostname=req.host if req.tls else None,
            ),
            timeout=timeout_s,
        )
    except asyncio.TimeoutError:
        failure = f"timeout after {timeout_s:g} s (connecting)"
    except (OSError, ssl.SSLError) as exc:
        failure = f"connection failed: {exc}"
    if failure is not None:
        now = _now()
        return Exchange(req, scheduled_ns, now, now, [], timeout_s, failure=failure)
    timer = loop.call_at(deadline, proto.expire)
    sent_ns = _now()
    transport.write(req.payload)
    try:
        await done
    finally:
        timer.cancel()
        transport.close()
    lost = str(proto.error) if proto.error is not None else None
    return Exchange(
        req, scheduled_ns, sent_ns, proto.end_ns, proto.reads, timeout_s, proto.timed_out, None, lost
    )


async def send(req: Prepared, *, scheduled_ns: int, timeout_s: float) -> RequestRecord:
    """``exchange`` then parse: one request to one record."""
    return (await exchange(req, scheduled_ns=scheduled_ns, timeout_s=timeout_s)).record()


FILES_BESIDES_SOCKETS = 64
"""Open files a session holds besides one socket per request in flight: logs, pipes, pytest's own."""


def concurrency_problem(concurrency: int) -> str | None:
    """Why this process cannot hold ``concurrency`` requests in flight, or ``None``.

    Raises the soft open-file limit toward the hard one first, as a run
    would; then checks the hard limit and the local port range (every
    connection to one server needs its own local port).
    """
    needed = concurrency + FILES_BESIDES_SOCKETS
    soft = raise_open_file_limit(needed)
    if soft != resource.RLIM_INFINITY and soft < needed:
        most = max(soft - FILES_BESIDES_SOCKETS, 1)
        return (
            f"{concurrency} requests in flight need about {needed} open files, but this process may "
            f"open at most {soft} (ulimit -Hn); lower the concurrency to {most} or raise the hard limit"
        )
    ports = local_port_count()
    if ports is not None and concurrency > ports:
        return (
            f"{concurrency} requests in flight need as many connections to one server, but this machine "
            f"has {ports} local ports (net.ipv4.ip_local_port_range); lower the concurrency"
        )
    return None


def local_port_count(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> int | None:
    """How many local ports the kernel hands out for outgoing connections (Linux), else ``None``."""
    try:
        with open(path, encoding="ascii") as handle:
            low, high = (int(part) for part in handle.read().split()[:2])
    except (OSError, ValueError):
        return None
    return high - low + 1


def raise_open_file_limit(needed: int) -> int:
    """Raise the soft open-file limit toward the hard one when ``needed`` is more.

    Each in-flight request holds one socket; the default soft limit (often
    1024) would turn high concurrency into ``EMFILE`` errors. Returns the
    soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        new = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        if new > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
    return soft

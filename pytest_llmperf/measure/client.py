"""One streamed LLM request on a raw asyncio connection, stamped per read.

The hot path is ``stream.Stream``, the connection's protocol: its
``data_received`` appends ``(time.perf_counter_ns(), bytes)`` and does one
cheap check of where the response ends, no HTTP parsing or JSON while tokens
arrive, so the stamps carry the least client delay Python allows. Only after
a request ends does :mod:`pytest_llmperf.measure.wire` turn the bytes into a
``RequestRecord``.

Connections are HTTP/1.1 keep-alive by default, as the clients users compare
with keep them: a ``Connections`` pool per run hands each request an idle
connection or opens one, so a closed loop of N streams holds N connections.
The load generator opens them before the measured phase
(``Connections.preconnect``), so no measured request pays a connect, and
``queue_ms`` in a closed loop is client queueing only. ``keep_alive=False``
sends ``Connection: close`` and opens a connection per request, as 0.1 did.

A server may close a kept-alive connection at any time (its idle timeout, a
request-count limit). A connection found closed is dropped and a new one
opened; its connect time is before ``sent_ns``, so it shows in ``queue_ms``,
never in TTFT. If the server closed it just as our request went out (the
connection ends with no byte of an answer), the request is sent once more on
a fresh connection and its ``sent_ns`` is that second send: TTFT never
includes a lost attempt, which is counted in ``Connections.retries`` and
goes into ``queue_ms``.

This module must not raise for anything the server does: every failure
(refused connection, HTTP error, broken stream, timeout) is a record with its
``error`` text. It must never log or store ``Target.headers``, which may hold
credentials.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pytest_llmperf.measure.limits import (
    FILES_BESIDES_SOCKETS,
    concurrency_problem,
    local_port_count,
    raise_open_file_limit,
)
from pytest_llmperf.measure.stream import Stream
from pytest_llmperf.measure.wire import Parsed, Read, parse_response

__all__ = [  # the file limits live in ``limits``, the connection protocol in ``stream``
    "FILES_BESIDES_SOCKETS",
    "ClientReport",
    "ConnectionStats",
    "Connections",
    "Exchange",
    "Prepared",
    "Stream",
    "Target",
    "concurrency_problem",
    "exchange",
    "local_port_count",
    "prepare",
    "raise_open_file_limit",
    "request_body",
    "send",
]
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


@dataclass(frozen=True)
class RequestSpec:
    """Which request this is and what it asks for: its id (sent as ``x-request-id``), its
    scenario's name, the input tokens it was built with and the output tokens it asks for."""

    request_id: str
    scenario: str
    input_tokens: int
    max_tokens: int
    warmup: bool = False


def prepare(
    target: Target,
    prompt: str,
    spec: RequestSpec,
    *,
    body: Mapping[str, object] | None = None,
    keep_alive: bool = True,
) -> Prepared:
    """Build the request bytes (HTTP/1.1) for one request; ``keep_alive=False`` asks the
    server to close the connection after it (``Connection: close``).

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
    payload = body if body is not None else request_body(target, prompt, spec.max_tokens)
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
        "Connection: keep-alive" if keep_alive else "Connection: close",
        f"x-request-id: {spec.request_id}",
    ]
    lines.extend(f"{k}: {v}" for k, v in target.headers.items())
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return Prepared(
        request_id=spec.request_id,
        scenario=spec.scenario,
        api=api,
        host=host,
        port=port,
        tls=tls,
        payload=head + encoded,
        input_tokens_requested=spec.input_tokens,
        output_tokens_requested=spec.max_tokens,
        warmup=spec.warmup,
    )


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


@dataclass(frozen=True)
class ConnectionStats:
    """What a run's connections did: how many were opened, and requests sent again."""

    opened: int = 0
    retries: int = 0

    def __add__(self, other: ConnectionStats) -> ConnectionStats:
        return ConnectionStats(self.opened + other.opened, self.retries + other.retries)


@dataclass(frozen=True)
class ClientReport:
    """How the client ran one measurement: its processes, its connections and its own CPU.

    ``cpu_s`` is the CPU time of every client process (each thread: the
    event loops, the parser, the telemetry sampler in the test's process)
    over the measured phase; ``cores`` the cores the client was pinned to.
    """

    workers: int
    keep_alive: bool
    connections: ConnectionStats
    cpu_s: float | None
    cores: tuple[int, ...] | None = None

    def as_json(self, output_tokens: int) -> dict[str, object]:
        """The ``extra_info["llm"]["client"]`` figures of this run, for ``output_tokens`` delivered."""
        cpu = self.cpu_s
        return {
            "workers": self.workers,
            "connections": "keep-alive" if self.keep_alive else "per-request",
            "connections_opened": self.connections.opened,
            "retries": self.connections.retries,
            "cpu_s": round(cpu, 4) if cpu is not None else None,
            "cpu_ms_per_1k_output_tokens": round(cpu * 1e6 / output_tokens, 2)
            if cpu is not None and output_tokens > 0
            else None,
            "cores": list(self.cores) if self.cores is not None else None,
        }


class Connections:
    """The connections of one run to one server, each carrying one request at a time.

    ``keep_alive=False`` opens a connection per request and closes it after
    (requests must then be prepared with ``keep_alive=False``).
    """

    def __init__(self, *, keep_alive: bool = True) -> None:
        self.keep_alive = keep_alive
        self._idle: list[Stream] = []
        self._open: set[Stream] = set()  # every connection not yet closed: idle or carrying a request
        self.opened = 0
        self.retries = 0

    @property
    def stats(self) -> ConnectionStats:
        return ConnectionStats(self.opened, self.retries)

    def _take(self) -> Stream | None:
        idle = self._idle
        while idle:
            proto = idle.pop()
            transport = proto.transport
            if not proto.lost and transport is not None and not transport.is_closing():
                return proto
            self._close(proto)
        return None

    async def _connect(self, req: Prepared, timeout_s: float) -> Stream | str:
        loop = asyncio.get_running_loop()
        try:
            _transport, proto = await asyncio.wait_for(
                loop.create_connection(
                    Stream,
                    req.host,
                    req.port,
                    ssl=_tls() if req.tls else None,
                    server_hostname=req.host if req.tls else None,
                ),
                timeout=max(timeout_s, 0.0),
            )
        except asyncio.TimeoutError:
            return f"timeout after {timeout_s:g} s (connecting)"
        except (OSError, ssl.SSLError) as exc:
            return f"connection failed: {exc}"
        self.opened += 1
        self._open.add(proto)
        return proto

    async def preconnect(self, req: Prepared, count: int, timeout_s: float) -> None:
        """Open connections until ``count`` are idle, so the measured requests find them ready.

        A connection that cannot be opened now is left to the request that
        needs it, which records the failure.
        """
        if not self.keep_alive:
            return
        missing = count - len(self._idle)
        if missing <= 0:
            return
        opened = await asyncio.gather(*(self._connect(req, timeout_s) for _ in range(missing)))
        self._idle.extend(p for p in opened if isinstance(p, Stream))

    async def exchange(self, req: Prepared, *, scheduled_ns: int, timeout_s: float) -> Exchange:
        """Send one prepared request and collect its stamped reads; never raises for I/O.

        ``timeout_s`` bounds the whole request, connecting included; when it
        expires the connection is aborted and the record will say so.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        retried = False
        while True:
            proto = self._take() if self.keep_alive else None
            reused = proto is not None
            if proto is None:
                opened = await self._connect(req, deadline - loop.time())
                if isinstance(opened, str):
                    now = _now()
                    return Exchange(req, scheduled_ns, now, now, [], timeout_s, failure=opened)
                proto = opened
            transport = proto.transport
            assert transport is not None
            done: asyncio.Future[None] = loop.create_future()
            proto.begin(done)
            timer = loop.call_at(deadline, proto.expire)
            sent_ns = _now()
            if not proto.lost:  # a connection closed before we could send is answered by nothing
                transport.write(req.payload)
            try:
                await done
            except BaseException:
                self._close(proto)  # an interrupted run: nothing of this request stays open
                raise
            finally:
                timer.cancel()
            if reused and proto.lost and not proto.reads and not proto.timed_out and not retried:
                # The server closed this idle connection as our request went out: nothing of the
                # request was answered, so it goes again on a new connection (counted, not hidden).
                self.retries += 1
                retried = True
                self._close(proto)
                continue
            break
        if self.keep_alive and proto.complete and proto.keep and not proto.lost:
            proto.done = None
            self._idle.append(proto)
        else:
            self._close(proto)
        lost = str(proto.error) if proto.error is not None else None
        return Exchange(
            req, scheduled_ns, sent_ns, proto.end_ns, proto.reads, timeout_s, proto.timed_out, None, lost
        )

    def _close(self, proto: Stream) -> None:
        self._open.discard(proto)
        if proto.transport is not None:
            proto.transport.close()

    def close(self) -> None:
        """Close every connection still open (the run is over, or was interrupted)."""
        self._idle.clear()
        while self._open:
            self._close(self._open.pop())


async def exchange(req: Prepared, *, scheduled_ns: int, timeout_s: float) -> Exchange:
    """One request on a connection of its own, closed after it."""
    connections = Connections(keep_alive=False)
    return await connections.exchange(req, scheduled_ns=scheduled_ns, timeout_s=timeout_s)


async def send(req: Prepared, *, scheduled_ns: int, timeout_s: float) -> RequestRecord:
    """``exchange`` then parse: one request to one record."""
    return (await exchange(req, scheduled_ns=scheduled_ns, timeout_s=timeout_s)).record()

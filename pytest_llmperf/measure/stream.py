"""One HTTP/1.1 connection's reading side: every read stamped, and where each response ends.

``Stream`` is the ``asyncio.Protocol`` of a client connection. Its
``data_received`` is the hot path: it appends ``(perf_counter_ns, bytes)``
and does one cheap check of where the response ends: a byte count for
``Content-Length``, a look at the last bytes of the read for the chunked
terminator (a full walk of the chunk sizes runs only when a read could be the
end). The head is read once per response. A connection carries one request
at a time; ``begin`` arms it for the next.

This module must not parse bodies (``wire`` does, after the request) or
decide anything about connections (``client.Connections`` does).
"""

from __future__ import annotations

import asyncio
import time

from pytest_llmperf.measure.wire import Read

_now = time.perf_counter_ns

_CHUNKED, _LENGTH, _TO_EOF, _HEAD = 0, 1, 2, 3
"""How the current response ends: chunked terminator, byte count, EOF; ``_HEAD``: head not read yet."""
_HEAD_LIMIT = 1 << 20
"""Bytes without a complete head after which the reply is not HTTP: read it to the end instead."""


class Stream(asyncio.Protocol):
    """One connection: each read kept with its arrival stamp, plus where the response ends.

    A connection carries one request at a time (no pipelining); ``begin``
    arms it for the next one.
    """

    __slots__ = (
        "complete", "done", "end_ns", "error", "got", "keep", "lost", "mode", "raw", "raw_reads",
        "reads", "timed_out", "transport", "walk", "want",
    )  # fmt: skip

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.error: BaseException | None = None
        self.done: asyncio.Future[None] | None = None
        self.reads: list[Read] = []
        self.mode = _HEAD
        self.got = 0
        self.want = 0
        self.keep = False
        self.complete = False
        self.timed_out = False
        self.end_ns = 0
        self.raw = bytearray()
        self.raw_reads = 0
        self.walk = 0

    def begin(self, done: asyncio.Future[None]) -> None:
        """Arm the connection for one request; ``done`` resolves when its response has ended."""
        self.done = done
        self.reads = []
        self.mode = _HEAD
        self.got = self.want = 0
        self.keep = self.complete = self.timed_out = False
        self.end_ns = 0
        self.raw = bytearray()
        self.raw_reads = self.walk = 0
        if self.lost:
            self._end(_now())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        now = _now()
        self.reads.append((now, data))
        mode = self.mode
        if mode == _CHUNKED:
            # Every chunked body ends in CRLF CRLF (the terminator, or trailers after it);
            # a short read may hold the second half of it.
            if data.endswith(b"\r\n\r\n") or len(data) < 4:
                self._walk_chunks(now)
        elif mode == _LENGTH:
            self.got += len(data)
            if self.got >= self.want:
                self._finished(now)
        elif mode == _HEAD:
            self._head(now)

    def _head(self, now: int) -> None:
        """Read the status line and framing headers, once per response (not per token)."""
        if self.done is None or self.done.done():
            # Bytes on an idle connection: no request of ours asked for them, so it cannot be reused.
            self.keep = False
            if self.transport is not None:
                self.transport.close()
            return
        raw = b"".join(data for _, data in self.reads)
        end = raw.find(b"\r\n\r\n")
        if end < 0:
            if len(raw) > _HEAD_LIMIT:
                self.mode = _TO_EOF
            return
        lines = raw[:end].decode("latin-1").split("\r\n")
        parts = lines[0].split(None, 2)
        status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0
        fields: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip().lower()
        connection = {token.strip() for token in fields.get("connection", "").split(",")}
        self.keep = parts[0] == "HTTP/1.1" and "close" not in connection
        body = len(raw) - end - 4
        if status in (204, 304) or 100 <= status < 200:
            # No body; an interim 1xx answer is not ours to handle, so the connection is not reused.
            self.keep = self.keep and status >= 200
            self._finished(now)
        elif "chunked" in fields.get("transfer-encoding", ""):
            self.mode = _CHUNKED
            self.walk = end + 4
            self._walk_chunks(now)
        elif fields.get("content-length", "").isdigit():
            self.mode = _LENGTH
            self.want = int(fields["content-length"])
            self.got = body
            if self.got >= self.want:
                self._finished(now)
        else:
            self.mode = _TO_EOF  # the body runs to the end of the connection
            self.keep = False

    def _walk_chunks(self, now: int) -> None:
        """Follow the chunk sizes from where the last walk stopped; done at the last chunk.

        Runs when a read could be the end, so a server whose events end in CRLF
        makes it run per read: each byte is copied and walked once all the same.
        """
        reads, raw = self.reads, self.raw
        for _, data in reads[self.raw_reads :]:
            raw += data
        self.raw_reads = len(reads)
        pos = self.walk
        while True:
            eol = raw.find(b"\r\n", pos)
            if eol < 0:
                break
            try:
                size = int(raw[pos:eol].split(b";", 1)[0].strip(), 16)
            except ValueError:
                self.mode, self.keep = _TO_EOF, False  # not chunked after all: read to EOF
                return
            if size == 0:
                # The last chunk: trailers (usually none) end with an empty line.
                if raw[eol + 2 : eol + 4] == b"\r\n" or raw.find(b"\r\n\r\n", eol) >= 0:
                    self._finished(now)
                break
            pos = eol + 2 + size + 2
            if pos > len(raw):
                break
        self.walk = pos

    def _finished(self, now: int) -> None:
        self.complete = True
        self.mode = _HEAD
        self._end(now)

    def _end(self, now: int) -> None:
        if self.done is not None and not self.done.done():
            self.end_ns = now
            self.done.set_result(None)

    def eof_received(self) -> bool | None:
        return None  # let the transport close; connection_lost ends a request in flight

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.error = exc
        self._end(_now())

    def expire(self) -> None:
        self.timed_out = True
        if self.transport is not None:
            self.transport.abort()

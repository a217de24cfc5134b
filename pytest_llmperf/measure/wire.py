"""Turn the stamped reads of one HTTP response into token arrival times.

Runs after a request has ended, never while bytes arrive. It undoes HTTP/1.1
framing (chunked, content-length or close-delimited), splits the body into
SSE events (OpenAI completions and chat) or NDJSON lines (Ollama), and stamps
each event with the arrival time of the read that completed it.

Token counts come from the server's usage, never from counting chunks: a
chunk may carry several tokens. When the server sends cumulative usage in
every chunk, each chunk's count is exact ("usage"); when chunks and tokens
match one to one it is "one_per_chunk"; otherwise the usage total is spread
over the chunks by text length ("estimated"). Without usage the counts stay
unknown. This module must stay pure: no I/O, no clock.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

from pytest_llmperf.records import Api, ChunkTokensSource

Read = tuple[int, bytes]

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


@dataclass(frozen=True)
class Parsed:
    """What one response said, with stamps; ``error`` is ``None`` when it is usable."""

    status: int | None
    end_ns: int
    chunk_ns: tuple[int, ...] = ()
    chunk_tokens: tuple[int, ...] = ()
    chunk_tokens_source: ChunkTokensSource = "one_per_chunk"
    input_tokens: int | None = None
    output_tokens: int | None = None
    error: str | None = None


@dataclass
class _Body:
    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool
    seg_body: list[int]
    seg_raw: list[int]
    ends: list[int]
    stamps: list[int]
    seg: int = 0
    read: int = 0

    def stamp_at(self, offset: int) -> int:
        """Arrival time of the read that holds body byte ``offset``.

        Offsets must not decrease between calls: both cursors only move forward,
        so stamping a whole response is linear.
        """
        seg_body, i = self.seg_body, self.seg
        while i + 1 < len(seg_body) and seg_body[i + 1] <= offset:
            i += 1
        self.seg = i
        raw = self.seg_raw[i] + (offset - seg_body[i])
        ends, j = self.ends, self.read
        while j + 1 < len(ends) and ends[j] <= raw:
            j += 1
        self.read = j
        return self.stamps[j]


def _snippet(data: bytes, limit: int = 200) -> str:
    text = data.decode("utf-8", "replace").strip().replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."


def _dechunk(raw: bytes, pos: int) -> tuple[bytes, list[int], list[int], bool]:
    parts: list[bytes] = []
    seg_body: list[int] = []
    seg_raw: list[int] = []
    length = 0
    while True:
        eol = raw.find(b"\r\n", pos)
        if eol < 0:
            return b"".join(parts), seg_body, seg_raw, False
        try:
            size = int(raw[pos:eol].split(b";", 1)[0].strip(), 16)
        except ValueError:
            return b"".join(parts), seg_body, seg_raw, False
        if size == 0:
            return b"".join(parts), seg_body, seg_raw, True
        start = eol + 2
        piece = raw[start : start + size]
        seg_body.append(length)
        seg_raw.append(start)
        parts.append(piece)
        length += len(piece)
        if len(piece) < size:
            return b"".join(parts), seg_body, seg_raw, False
        pos = start + size + 2


def _split_http(reads: Sequence[Read]) -> _Body | str:
    raw = b"".join(data for _, data in reads)
    head_end = raw.find(b"\r\n\r\n")
    if head_end < 0:
        return f"incomplete HTTP response ({len(raw)} bytes): {_snippet(raw, 80)}"
    lines = raw[:head_end].decode("latin-1").split("\r\n")
    parts = lines[0].split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return f"not an HTTP response: {lines[0][:80]!r}"
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    start = head_end + 4
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body, seg_body, seg_raw, complete = _dechunk(raw, start)
        if not seg_body:
            seg_body, seg_raw = [0], [start]
    elif headers.get("content-length", "").isdigit():
        size = int(headers["content-length"])
        body = raw[start : start + size]
        seg_body, seg_raw, complete = [0], [start], len(body) == size
    else:
        body, seg_body, seg_raw, complete = raw[start:], [0], [start], True
    return _Body(
        status=int(parts[1]),
        headers=headers,
        body=body,
        complete=complete,
        seg_body=seg_body,
        seg_raw=seg_raw,
        ends=list(accumulate(len(data) for _, data in reads)),
        stamps=[at for at, _ in reads],
    )


def apportion(total: int, weights: Sequence[int]) -> tuple[int, ...]:
    """Split ``total`` tokens over chunks in proportion to ``weights`` (largest remainder).

    When there are at least as many tokens as chunks, every chunk keeps at
    least one (a chunk with text carried a token), taken from the largest.
    """
    n = len(weights)
    if n == 0:
        return ()
    w = [max(x, 0) for x in weights]
    if sum(w) == 0:
        w = [1] * n
    s = sum(w)
    quotas = [total * x / s for x in w]
    counts = [math.floor(q) for q in quotas]
    order = sorted(range(n), key=lambda i: (counts[i] - quotas[i], i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    if total >= n:
        for i in range(n):
            if counts[i] == 0:
                counts[max(range(n), key=lambda j: counts[j])] -= 1
                counts[i] = 1
    return tuple(counts)


@dataclass
class _Events:
    chunk_at: list[int]
    chunk_len: list[int]
    chunk_delta: list[int | None]
    usage_out: int | None = None
    usage_in: int | None = None
    done_at: int | None = None
    error: str | None = None
    tail: bytes = b""


def _error_text(value: object) -> str:
    if isinstance(value, dict):
        value = value.get("message", value)
    return str(value)[:200]


def _http_error(status: int, body: bytes) -> str:
    """``HTTP 429: <the server's message>``: the message from the usual JSON error bodies.

    OpenAI and vLLM send ``{"error": {"message": ...}}``, vLLM's older servers
    ``{"message": ...}``, FastAPI ``{"detail": ...}``, Ollama ``{"error": "..."}``;
    anything else is shown as it came.
    """
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("error", "message", "detail"):
            value = data.get(key)
            if isinstance(value, dict) and isinstance(value.get("message"), str):
                return f"HTTP {status}: {_snippet(value['message'].encode(), 300)}"
            if isinstance(value, str) and value:
                return f"HTTP {status}: {_snippet(value.encode(), 300)}"
    return f"HTTP {status}: {_snippet(body)}" if body.strip() else f"HTTP {status} (empty body)"


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _decode_all(payloads: list[bytes], what: str) -> list[object] | str:
    """Decode every payload in one C call; find the broken one only on failure."""
    if not payloads:
        return []
    try:
        objs = json.loads(b"[" + b",".join(payloads) + b"]")
        if isinstance(objs, list) and len(objs) == len(payloads):
            return objs
    except ValueError:
        pass
    out: list[object] = []
    for k, payload in enumerate(payloads, 1):
        try:
            out.append(json.loads(payload))
        except ValueError:
            return f"malformed {what} #{k}: {_snippet(payload, 80)}"
    return out


def _sse_payloads(data: bytes) -> tuple[list[int], list[bytes], bytes, str | None]:
    """Data payloads of complete SSE events, with the body offset ending each."""
    ends: list[int] = []
    payloads: list[bytes] = []
    if b"\r" not in data:
        blocks = data.split(b"\n\n")
        spans, tail = [], blocks.pop()
        pos = 0
        for block in blocks:
            pos += len(block) + 2
            spans.append((block, pos - 1))
    else:
        spans, start = [], 0
        for match in _EVENT_END.finditer(data):
            spans.append((data[start : match.start()], match.end() - 1))
            start = match.end()
        tail = data[start:]
    for block, end in spans:
        if block.startswith(b"data: ") and b"\n" not in block:
            ends.append(end)
            payloads.append(block[6:])
            continue
        lines: list[bytes] = []
        for line in block.splitlines():
            if line.startswith(b"data:"):
                lines.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line.startswith(b"error:"):
                return ends, payloads, b"", f"server error in stream: {_snippet(line[6:])}"
        if lines:
            ends.append(end)
            payloads.append(b"\n".join(lines))
    return ends, payloads, tail.strip(), None


def _sse(body: _Body, chat: bool) -> _Events:
    ev = _Events([], [], [])
    ends, payloads, ev.tail, ev.error = _sse_payloads(body.body)
    done = next((k for k, p in enumerate(payloads) if p == b"[DONE]"), None)
    if done is not None:
        del payloads[done:]
    objs = _decode_all(payloads, "SSE event")
    if isinstance(objs, str):
        ev.error = ev.error or objs
        return ev
    prev_cum = 0
    for k, obj in enumerate(objs):
        if not isinstance(obj, dict):
            ev.error = f"malformed SSE event #{k + 1}: not a JSON object"
            return ev
        if obj.get("error") is not None:
            ev.error = f"server error in stream: {_error_text(obj['error'])}"
            return ev
        usage = obj.get("usage")
        cum: int | None = None
        if isinstance(usage, dict):
            ev.usage_out = cum = _int(usage.get("completion_tokens"))
            ev.usage_in = _int(usage.get("prompt_tokens"))
        choices = obj.get("choices")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            continue
        if chat:
            delta = choices[0].get("delta")
            content = (
                (delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning"))
                if isinstance(delta, dict)
                else None
            )
        else:
            content = choices[0].get("text")
        step: int | None = None
        if cum is not None:
            step, prev_cum = cum - prev_cum, cum
        if content or (step is not None and step > 0):
            ev.chunk_at.append(body.stamp_at(ends[k]))
            ev.chunk_len.append(len(content) if isinstance(content, str) else 1)
            ev.chunk_delta.append(step)
    if done is not None and ev.error is None:
        ev.done_at = body.stamp_at(ends[done])
    return ev


def _ndjson(body: _Body, chat: bool) -> _Events:
    ev = _Events([], [], [])
    lines = body.body.split(b"\n")
    ev.tail = lines.pop().strip()
    ends: list[int] = []
    payloads: list[bytes] = []
    pos = 0
    for raw_line in lines:
        pos += len(raw_line) + 1
        line = raw_line.strip()
        if line:
            ends.append(pos - 1)
            payloads.append(line)
    objs = _decode_all(payloads, "NDJSON line")
    if isinstance(objs, str):
        ev.error = objs
        return ev
    for k, obj in enumerate(objs):
        if not isinstance(obj, dict):
            ev.error = f"malformed NDJSON line #{k + 1}: not a JSON object"
            return ev
        if obj.get("error") is not None:
            ev.error = f"server error in stream: {_error_text(obj['error'])}"
            return ev
        if chat:
            message = obj.get("message")
            content = (
                (message.get("content") or message.get("thinking")) if isinstance(message, dict) else None
            )
        else:
            content = obj.get("response") or obj.get("thinking")
        if content:
            ev.chunk_at.append(body.stamp_at(ends[k]))
            ev.chunk_len.append(len(content) if isinstance(content, str) else 1)
            ev.chunk_delta.append(None)
        if obj.get("done") is True:
            ev.done_at = body.stamp_at(ends[k])
            ev.usage_out = _int(obj.get("eval_count"))
            ev.usage_in = _int(obj.get("prompt_eval_count"))
            return ev
    return ev


def parse_response(api: Api, reads: Sequence[Read], eof_ns: int, max_tokens: int) -> Parsed:
    """Parse one whole response; ``eof_ns`` is when the connection closed."""
    if not reads:
        return Parsed(status=None, end_ns=eof_ns, error="connection closed before any response")
    split = _split_http(reads)
    if isinstance(split, str):
        return Parsed(status=None, end_ns=eof_ns, error=split)
    if split.status != 200:
        return Parsed(status=split.status, end_ns=eof_ns, error=_http_error(split.status, split.body))
    ndjson = api.startswith("ollama")
    chat = api in ("chat", "ollama-chat")
    ev = _ndjson(split, chat) if ndjson else _sse(split, chat)
    out, n = ev.usage_out, len(ev.chunk_at)
    tokens: tuple[int, ...] = ()
    source: ChunkTokensSource = "one_per_chunk"
    if out is not None and n:
        steps = [s for s in ev.chunk_delta if s is not None]
        if len(steps) == n and sum(steps) == out:
            tokens, source = tuple(steps), "usage"
        elif n == out:
            tokens = (1,) * n
        else:
            tokens, source = apportion(out, ev.chunk_len), "estimated"
    error = ev.error
    if error is None and ev.done_at is None:
        marker = "done:true line" if ndjson else "[DONE]"
        how = "" if split.complete else ", body incomplete"
        error = f"stream truncated: no {marker} after {n} content chunks{how}"
        if ev.tail:
            error += f"; trailing bytes: {_snippet(ev.tail, 60)}"
    if error is None and n == 0:
        error = "stream ended with no output tokens"
    if error is None and out is not None and out > max_tokens:
        error = f"output longer than max_tokens: server sent {out} tokens, {max_tokens} were asked for"
    return Parsed(
        status=split.status,
        end_ns=ev.done_at if ev.done_at is not None else eof_ns,
        chunk_ns=tuple(ev.chunk_at),
        chunk_tokens=tokens,
        chunk_tokens_source=source,
        input_tokens=ev.usage_in,
        output_tokens=out,
        error=error,
    )


def response_text(api: Api, reads: Sequence[Read]) -> str:
    """The generated text of a whole response (what a multi-turn conversation appends to its history).

    Empty for a response that is not a usable 200 stream; it never raises.
    """
    split = _split_http(reads)
    if isinstance(split, str) or split.status != 200:
        return ""
    chat = api in ("chat", "ollama-chat")
    if api.startswith("ollama"):
        payloads = [line.strip() for line in split.body.split(b"\n") if line.strip()]
    else:
        payloads = [p for p in _sse_payloads(split.body)[1] if p != b"[DONE]"]
    objs = _decode_all(payloads, "event")
    if isinstance(objs, str):
        return ""
    parts: list[str] = []
    for obj in objs:
        if not isinstance(obj, dict):
            continue
        if api.startswith("ollama"):
            holder = obj.get("message") if chat else obj
            text = holder.get("content" if chat else "response") if isinstance(holder, dict) else None
        else:
            choices = obj.get("choices")
            first = choices[0] if isinstance(choices, list) and choices else None
            holder = first.get("delta") if chat and isinstance(first, dict) else first
            text = holder.get("content" if chat else "text") if isinstance(holder, dict) else None
        if isinstance(text, str):
            parts.append(text)
    return "".join(parts)

"""The bytes the deterministic server sends: vLLM's and Ollama's wire shapes.

Kept apart from the server's event handling so the shapes can be read (and
compared with the real servers) in one place. Everything here is pure byte
building; the JSON field order follows each server's serializer (pydantic in
vLLM, Go's ``encoding/json`` in Ollama), and Ollama lines end in ``\\n``.
This module must not do I/O or keep time beyond reading the wall clock for
``created``/``created_at`` fields.
"""

from __future__ import annotations

import json
import time
import zlib
from typing import Any, Protocol

GENERATE = {
    "/v1/completions": "completions",
    "/v1/chat/completions": "chat",
    "/api/generate": "ollama-generate",
    "/api/chat": "ollama-chat",
}
BOS_ID = 1
MAX_MODEL_LEN = 32768
_WORDS = tuple(
    f" {w}"
    for w in ["the", "model", "said", "that", "a", "fast", "server", "streams", "each", "token", "on", "time"]
)
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
# OpenAI's error body (``{"error": {"message", "type", "param", "code"}}``) for the HTTP
# faults; the messages are OpenAI's own wording for each status.
HTTP_FAULTS: dict[str, tuple[int, str, str, str | None]] = {
    "http401": (401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    "http429": (
        429,
        "Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1.",
        "requests",
        "rate_limit_exceeded",
    ),
    "http503": (503, "The engine is currently overloaded, please try again later", "server_error", None),
}
_DIGEST = "a2af6cc3eb7fa8be8504abaf9b04e88f17a119ec3f04a3addf55f92841195f5a"


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def head(status: int, ctype: str, date: str, length: int | None, *, close: bool, go: bool) -> bytes:
    """Status line and headers as uvicorn (vLLM) or Go's net/http (Ollama) write them."""
    framing = ("Content-Length", str(length)) if length is not None else ("Transfer-Encoding", "chunked")
    if go:  # Go sorts header names
        fields = [("Content-Type", ctype), ("Date", date), framing]
        if close:
            fields.insert(0, ("Connection", "close"))
    else:
        fields = [("date", date), ("server", "uvicorn")]
        if close:
            fields.append(("connection", "close"))
        fields += [(framing[0].lower(), framing[1]), ("content-type", ctype)]
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}"] + [f"{k}: {v}" for k, v in fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def token_id(word: str) -> int:
    return zlib.crc32(word.encode()) % 50_000 + 100


def words_of_chat(messages: object, add_generation_prompt: bool = True) -> list[str]:
    """The whitespace tokens of our chat template: ``<s> <|role|> ... <|end|> <|assistant|>``."""
    words = ["<s>"]
    for m in messages if isinstance(messages, list) else []:
        if isinstance(m, dict):
            words += [f"<|{m.get('role', 'user')}|>", *str(m.get("content", "")).split(), "<|end|>"]
    if add_generation_prompt:
        words.append("<|assistant|>")
    return words


def prompt_tokens(api: str, body: dict[str, Any]) -> int:
    """What usage.prompt_tokens / prompt_eval_count reports: words + BOS (+ template)."""
    if api in ("chat", "ollama-chat"):
        return len(words_of_chat(body.get("messages")))
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        return len(prompt)
    return 1 + len(str(prompt).split())


def tokenize(raw: bytes) -> tuple[int, bytes]:
    """``/tokenize`` in vLLM's dialect, or llama-server's when ``content`` is given."""
    try:
        req = json.loads(raw or b"{}")
    except ValueError:
        return 400, b'{"error":"invalid JSON body"}'
    if "content" in req:
        ids = [BOS_ID] if req.get("add_special") else []
        ids += [token_id(w) for w in str(req["content"]).split()]
        return 200, _json({"tokens": ids})
    if "messages" in req:
        words = words_of_chat(req["messages"], bool(req.get("add_generation_prompt", True)))
        ids = [BOS_ID] + [token_id(w) for w in words[1:]]
    else:
        ids = [BOS_ID] if req.get("add_special_tokens", True) else []
        ids += [token_id(w) for w in str(req.get("prompt", "")).split()]
    return 200, _json({"count": len(ids), "max_model_len": MAX_MODEL_LEN, "tokens": ids, "token_strs": None})


def _rfc3339(ns: int) -> str:
    sec, frac = divmod(ns, 1_000_000_000)
    digits = f"{frac:09d}".rstrip("0")
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + (f".{digits}" if digits else "") + "Z"


def static(path: str, model: str) -> bytes | None:
    """The fixed answers: model lists, Ollama's process list and version."""
    created = int(time.time())
    details: dict[str, object] = {
        "parent_model": "",
        "format": "gguf",
        "family": "detserver",
        "families": ["detserver"],
        "parameter_size": "0",
        "quantization_level": "F16",
    }
    if path == "/v1/models":
        perm = {
            "id": "modelperm-detserver",
            "object": "model_permission",
            "created": created,
            "allow_create_engine": False,
            "allow_sampling": True,
            "allow_logprobs": True,
            "allow_search_indices": False,
            "allow_view": True,
            "allow_fine_tuning": False,
            "organization": "*",
            "group": None,
            "is_blocking": False,
        }
        card: dict[str, object] = {
            "id": model,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": model,
        }
        card.update({"parent": None, "max_model_len": MAX_MODEL_LEN, "permission": [perm]})
        return _json({"object": "list", "data": [card]})
    entry: dict[str, object] = {"name": model, "model": model}
    if path == "/api/tags":
        entry.update(
            {"modified_at": "2025-01-01T00:00:00Z", "size": 1, "digest": _DIGEST, "details": details}
        )
        return _json({"models": [entry]})
    if path == "/api/ps":
        entry.update({"size": 1, "digest": _DIGEST, "details": details})
        entry.update({"expires_at": "2099-01-01T00:00:00Z", "size_vram": 0, "context_length": 4096})
        return _json({"models": [entry]})
    if path == "/api/version":
        return b'{"version":"0.12.6"}'
    return None


class Shape:
    """Pre-built byte pieces of one answer, so a token write is one format call."""

    def __init__(self, api: str, model: str, body: dict[str, Any], seq: int) -> None:
        self.api = api
        self.ollama = api.startswith("ollama")
        self.chat = api in ("chat", "ollama-chat")
        self.stream = bool(body.get("stream", self.ollama))
        if self.ollama:
            options = body.get("options") or {}
            n = options.get("num_predict", 128) if isinstance(options, dict) else 128
        else:
            n = body.get("max_tokens") or body.get("max_completion_tokens") or 16
        self.max_tokens = int(n) if isinstance(n, (int, float)) and n > 0 else 128
        self.prompt_tokens = prompt_tokens(api, body)
        opts = body.get("stream_options") or {}
        self.include_usage = bool(isinstance(opts, dict) and opts.get("include_usage"))
        self.continuous = bool(isinstance(opts, dict) and opts.get("continuous_usage_stats"))
        self.model_json = json.dumps(body.get("model") or model)
        self.json_type = "application/json; charset=utf-8" if self.ollama else "application/json"
        self.stream_type = "application/x-ndjson" if self.ollama else "text/event-stream; charset=utf-8"
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{seq:032x}"
        created = int(time.time())
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        self.head = (
            f'{{"id":"{self.id}","object":"{obj}","created":{created},"model":{self.model_json},'.encode()
        )

    def _usage(self, done: int) -> bytes:
        p = self.prompt_tokens
        return b'{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}' % (p, p + done, done)

    def _text(self, start: int, count: int) -> str:
        return "".join(_WORDS[i % len(_WORDS)] for i in range(start, start + count))

    def opening(self) -> list[bytes]:
        if self.chat and not self.ollama:
            usage = b',"usage":' + self._usage(0) if self.continuous else b""
            delta = b'{"role":"assistant","content":""}'
            choice = b'[{"index":0,"delta":%b,"logprobs":null,"finish_reason":null}]' % delta
            return [b"data: " + self.head + b'"choices":' + choice + usage + b"}\n\n"]
        return []

    def tokens(self, start: int, count: int, final: bool, eos: bool = False) -> list[bytes]:
        text = self._text(start, count).encode()
        if self.ollama:
            ts = _rfc3339(time.time_ns()).encode()
            if self.chat:
                body = b'"message":{"role":"assistant","content":"%b"},"done":false}\n' % text
            else:
                body = b'"response":"%b","done":false}\n' % text
            return [b'{"model":%b,"created_at":"%b",%b' % (self.model_json.encode(), ts, body)]
        reason = (b'"stop"' if eos else b'"length"') if final else b"null"
        if self.chat:
            choice = b'{"index":0,"delta":{"content":"%b"},"logprobs":null,"finish_reason":%b}' % (
                text,
                reason,
            )
        else:
            choice = b'{"index":0,"text":"%b","logprobs":null,"finish_reason":%b,"stop_reason":null}' % (
                text,
                reason,
            )
        usage = self._usage(start + count) if self.continuous else b"null"
        return [b"data: " + self.head + b'"choices":[' + choice + b'],"usage":' + usage + b"}\n\n"]

    def closing(self, n: int, total_ns: int, first_ns: int) -> list[bytes]:
        if self.ollama:
            return [self._ollama_final(n, total_ns, first_ns, "", stream=True)]
        out = []
        if self.include_usage:
            out.append(b"data: " + self.head + b'"choices":[],"usage":' + self._usage(n) + b"}\n\n")
        out.append(b"data: [DONE]\n\n")
        return out

    def _ollama_final(self, n: int, total_ns: int, first_ns: int, text: str, stream: bool) -> bytes:
        ts = _rfc3339(time.time_ns())
        content = json.dumps(text)
        timing = (
            f'"total_duration":{total_ns},"load_duration":1000000,"prompt_eval_count":{self.prompt_tokens},'
            f'"prompt_eval_duration":{first_ns},"eval_count":{n},'
            f'"eval_duration":{max(total_ns - first_ns, 1)}}}'
        )
        if self.chat:
            line = (
                f'{{"model":{self.model_json},"created_at":"{ts}","message":{{"role":"assistant",'
                f'"content":{content}}},"done_reason":"length","done":true,{timing}'
            )
        else:
            context = ",".join(str(token_id(w)) for w in self._text(0, n).split())
            line = (
                f'{{"model":{self.model_json},"created_at":"{ts}","response":{content},"done":true,'
                f'"done_reason":"length","context":[{context}],{timing}'
            )
        return (line + ("\n" if stream else "")).encode()

    def whole(self, n: int, total_ns: int) -> bytes:
        """The non-streamed answer (``stream: false``), used by calibration probes."""
        text = self._text(0, n)
        if self.ollama:
            return self._ollama_final(n, total_ns, total_ns, text, stream=False)
        usage = self._usage(n)
        if self.chat:
            head = self.head.replace(b"chat.completion.chunk", b"chat.completion")
            msg = b'{"role":"assistant","content":%b,"tool_calls":[]}' % json.dumps(text).encode()
            choice = (
                b'{"index":0,"message":%b,"logprobs":null,"finish_reason":"length","stop_reason":null}' % msg
            )
        else:
            head = self.head
            choice = b'{"index":0,"text":%b,"logprobs":null,"finish_reason":"length","stop_reason":null}' % (
                json.dumps(text).encode()
            )
        return head + b'"choices":[' + choice + b'],"usage":' + usage + b"}"

    def error_body(self) -> bytes:
        msg = "detserver: injected fault http500"
        if self.ollama:
            return _json({"error": msg})
        return _json(
            {"object": "error", "message": msg, "type": "InternalServerError", "param": None, "code": 500}
        )

    def http_fault_body(self, fault: str) -> tuple[int, bytes]:
        """Status and OpenAI-shaped error body of an ``http401/429/503`` fault."""
        status, message, kind, code = HTTP_FAULTS[fault]
        if self.ollama:
            return status, _json({"error": message})
        return status, _json({"error": {"message": message, "type": kind, "param": None, "code": code}})

    def prompt_text(self, body: dict[str, Any]) -> str:
        """The prompt as sent: the completion prompt, or the chat messages' contents joined."""
        if "prompt" in body:
            return str(body["prompt"])
        messages = body.get("messages")
        return "\n".join(str(m.get("content", "")) for m in messages or [] if isinstance(m, dict))

    def broken(self) -> bytes:
        if self.ollama:
            return b'{"model":%b,"created_at":\n' % self.model_json.encode()
        return b"data: " + self.head + b'"choices":[{"index":0,"text":\n\n'


class _Metrics(Protocol):
    running: int
    finished: int
    prompt_tokens: int
    generation_tokens: int
    ttft_counts: list[int]
    ttft_sum: float


def prometheus(st: _Metrics, model: str, buckets: tuple[float, ...]) -> str:
    """A vLLM-style exposition: TTFT histogram, running gauge, token counters."""
    labels = f'engine="0",model_name="{model}"'
    name = "vllm:time_to_first_token_seconds"
    lines = [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{{{labels}}} {float(st.running)}",
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
        "# TYPE vllm:prompt_tokens_total counter",
        f"vllm:prompt_tokens_total{{{labels}}} {float(st.prompt_tokens)}",
        "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
        "# TYPE vllm:generation_tokens_total counter",
        f"vllm:generation_tokens_total{{{labels}}} {float(st.generation_tokens)}",
        "# HELP vllm:request_success_total Count of successfully processed requests.",
        "# TYPE vllm:request_success_total counter",
        f'vllm:request_success_total{{{labels},finished_reason="length"}} {float(st.finished)}',
        f"# HELP {name} Histogram of time to first token in seconds.",
        f"# TYPE {name} histogram",
    ]
    total = 0
    for edge, count in zip((*buckets, None), st.ttft_counts, strict=True):
        total += count
        le = "+Inf" if edge is None else repr(edge)
        lines.append(f'{name}_bucket{{{labels},le="{le}"}} {float(total)}')
    lines.append(f"{name}_count{{{labels}}} {float(total)}")
    lines.append(f"{name}_sum{{{labels}}} {st.ttft_sum}")
    return "\n".join(lines) + "\n"

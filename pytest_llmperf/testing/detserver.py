"""A deterministic-latency LLM server: a measuring instrument with known truth.

Run as ``python -m pytest_llmperf.testing.detserver --port P --ttft-ms 63.5
--itl-ms 10 --stamp-log FILE``. It binds 127.0.0.1 only and speaks, on raw
asyncio (uvloop when present) so that it stays lean at hundreds of streams:

* OpenAI ``/v1/completions`` and ``/v1/chat/completions``, streamed as vLLM
  streams them (SSE over chunked encoding, ``stream_options.include_usage``
  and ``continuous_usage_stats``, ``[DONE]``), plus vLLM's ``/tokenize``
  (and llama-server's dialect of it), ``/health``, ``/v1/models`` and a
  Prometheus ``/metrics`` with ``vllm:time_to_first_token_seconds``;
* Ollama's ``/api/generate``, ``/api/chat`` (NDJSON), ``/api/tags``,
  ``/api/ps`` and ``/api/version``.

Its tokenizer is whitespace: one word is one token, plus one BOS. It always
produces exactly ``max_tokens`` / ``num_predict`` tokens (ignore_eos implied),
token k at ``ttft + k * itl`` after the request arrived, and appends one JSON
line per request to the stamp log: the ``x-request-id``, and the
``perf_counter_ns`` of the first token write (CLOCK_MONOTONIC, comparable
across processes on Linux), optionally of every write, and optionally the
prompt text (``--log-prompts``). Faults (``--fault``) make it misbehave on
purpose for reliability tests; ``http401``, ``http429`` and ``http503`` answer
every *streamed* generation request with that status and OpenAI's error body
(non-streamed probes are served, as a rate-limited endpoint serves some);
``drop-reused`` closes a kept-alive connection, unanswered, when a second
request arrives on it. ``--max-requests-per-connection N`` closes each
connection after N answers, the last saying ``Connection: close``.
``--api-key-env VAR`` makes ``/v1/*`` answer 401 without ``Authorization:
Bearer $VAR``, as vLLM's ``--api-key`` does; ``--basic-auth-env VAR`` (VAR
holding ``user:password``) wants HTTP basic auth instead, as a server behind a
proxy with ``http://user:password@host`` credentials does.

A batch-limited mode makes it a server that saturates, with a latency model
whose answers can be worked out by hand (``--max-batch N``,
``--itl-growth-ms G``):

* at most N requests generate at once; a request arriving when N do waits,
  in arrival order, for one to finish (its TTFT carries the wait);
* a request's first token comes ``ttft`` after it starts generating, and
  the gap after each token is ``itl + G * (active - 1)``, ``active`` being
  the requests generating when that token is written.

So a closed loop at concurrency c <= N has TPOT ``itl + G(c - 1)`` and output
throughput ``c T / (ttft + (T - 1)(itl + G(c - 1)))`` for T output tokens;
beyond N, throughput stays at its value for N and only TTFT grows. Jitter
(``--jitter-ms``) adds to the TTFT and every gap, as in the plain mode.

This module must not import the rest of the package beyond the standard
library and uvloop: it is the reference the client is measured against.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import sys
import time
from collections import deque
from email.utils import formatdate
from typing import IO, Any

from pytest_llmperf.testing import wireformats as wf

_now = time.perf_counter_ns
FAULTS = (
    "http500",
    "malformed",
    "truncate",
    "hang",
    "slow",
    "ignore-max-tokens",
    "early-eos",
    "drop-reused",
    *wf.HTTP_FAULTS,
)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


class Config:
    """Parsed command line; plain attributes so the hot path reads them fast."""

    def __init__(self, ns: argparse.Namespace) -> None:
        self.ttft_s: float = ns.ttft_ms / 1000.0
        self.itl_s: float = ns.itl_ms * ns.itl_scale / 1000.0
        self.jitter_s: float = ns.jitter_ms / 1000.0
        self.seed: int = ns.seed
        self.model: str = ns.model
        self.chunk_tokens: int = max(1, ns.chunk_tokens)
        self.stamp_tokens: bool = ns.stamp_tokens
        self.slow_itl_s: float = ns.slow_itl_ms / 1000.0
        self.fault_every: int = max(1, ns.fault_every)
        self.fault: str | None = None
        self.die_after: int | None = None
        # Like vLLM's --api-key: /v1/* needs "Authorization: Bearer <key>". Read from the
        # environment, so the key never shows in a command line or in our own logs.
        self.api_key: str | None = os.environ.get(ns.api_key_env) if ns.api_key_env else None
        if ns.api_key_env and not self.api_key:
            raise SystemExit(f"--api-key-env {ns.api_key_env}: that environment variable is not set")
        self.authorization: str | None = f"Bearer {self.api_key}" if self.api_key else None
        if ns.basic_auth_env:
            pair = os.environ.get(ns.basic_auth_env)
            if not pair or ":" not in pair:
                raise SystemExit(f"--basic-auth-env {ns.basic_auth_env}: set it to user:password")
            self.authorization = "Basic " + base64.b64encode(pair.encode()).decode()
        self.log_prompts: bool = ns.log_prompts
        self.max_batch: int = max(0, ns.max_batch)
        self.itl_growth_s: float = ns.itl_growth_ms / 1000.0
        # Token times depend on the batch as it is then: computed token by token, not up front.
        self.batched: bool = self.max_batch > 0 or self.itl_growth_s > 0
        self.max_requests_per_connection: int = max(0, ns.max_requests_per_connection)
        if ns.fault:
            if ns.fault.startswith("die-after="):
                self.die_after = int(ns.fault.split("=", 1)[1])
            elif ns.fault in FAULTS:
                self.fault = ns.fault
            else:
                raise SystemExit(
                    f"unknown --fault {ns.fault!r}; choose from {', '.join(FAULTS)}, die-after=N"
                )


class State:
    """Counters shared by every connection of the process."""

    def __init__(self, cfg: Config, log: IO[str] | None) -> None:
        self.cfg = cfg
        self.log = log
        self.seq = 0
        self.finished = 0
        self.running = 0
        self.active = 0
        self.waiting: deque[Generation] = deque()
        self.ttft_counts = [0] * (len(TTFT_BUCKETS) + 1)
        self.ttft_sum = 0.0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self._date = ""
        self._date_at = 0

    def date(self) -> str:
        sec = int(time.time())
        if sec != self._date_at:
            self._date, self._date_at = formatdate(sec, usegmt=True), sec
        return self._date

    def observe_ttft(self, seconds: float) -> None:
        self.ttft_sum += seconds
        for i, edge in enumerate(TTFT_BUCKETS):
            if seconds <= edge:
                self.ttft_counts[i] += 1
                return
        self.ttft_counts[-1] += 1

    def metrics(self) -> bytes:
        return wf.prometheus(self, self.cfg.model, TTFT_BUCKETS).encode()

    def admit_waiting(self) -> None:
        """Start waiting requests, oldest first, while the batch has room."""
        limit = self.cfg.max_batch
        while self.waiting and (limit == 0 or self.active < limit):
            gen = self.waiting.popleft()
            if not gen.done:
                gen.admit()


class Generation:
    """One streamed answer, driven by ``loop.call_at`` timers (no task per stream)."""

    def __init__(
        self, conn: Connection, api: str, body: dict[str, Any], request_id: str, recv_ns: int
    ) -> None:
        st = conn.state
        cfg = st.cfg
        self.conn = conn
        self.api = api
        self.request_id = request_id
        self.recv_ns = recv_ns
        self.seq = st.seq
        st.seq += 1
        faulty = (self.seq % cfg.fault_every) == cfg.fault_every - 1
        self.fault = cfg.fault if faulty else None
        self.shape = wf.Shape(api, cfg.model, body, self.seq)
        self.prompt = self.shape.prompt_text(body) if cfg.log_prompts else None
        n = self.shape.max_tokens
        if self.fault == "ignore-max-tokens":
            n += max(1, n // 4)
        elif self.fault == "early-eos":  # ignore_eos not honoured: stops at half length
            n = max(1, n // 2)
        self.n = n
        self.sent = 0
        self.first_ns = 0
        self.token_ns: list[int] = []
        self.handle: asyncio.TimerHandle | None = None
        self.done = False
        self.logged = False
        rng = random.Random(cfg.seed * 1_000_003 + self.seq) if cfg.jitter_s > 0 else None
        self.rng = rng
        itl = cfg.slow_itl_s if self.fault == "slow" else cfg.itl_s
        self.itl_s = itl
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.started = False
        self.admitted = False
        st.running += 1
        st.prompt_tokens += self.shape.prompt_tokens
        self.due: list[float] = []
        if cfg.batched:
            if cfg.max_batch == 0 or st.active < cfg.max_batch:
                self.admit()
            else:
                st.waiting.append(self)
            return
        start = loop.time()
        # Absolute due times, so that a late tick does not delay every later token.
        first = cfg.ttft_s + (rng.gauss(0.0, cfg.jitter_s) if rng else 0.0)
        due = [start + max(first, 0.0)]
        for _ in range(1, n):
            gap = itl + (rng.gauss(0.0, cfg.jitter_s) if rng else 0.0)
            due.append(due[-1] + max(gap, 0.0))
        self.due = due

    def _noise(self) -> float:
        return self.rng.gauss(0.0, self.conn.state.cfg.jitter_s) if self.rng else 0.0

    def admit(self) -> None:
        """Batched mode: start generating now (a slot is free); the first token is ``ttft`` away."""
        st = self.conn.state
        st.active += 1
        self.admitted = True
        self.due = [self.loop.time() + max(st.cfg.ttft_s + self._noise(), 0.0)]
        if self.started:
            self._schedule()

    def start(self) -> None:
        self.started = True
        if self.fault == "http500":
            self.conn.respond(500, self.shape.error_body(), self.shape.json_type, done=self)
            return
        if self.fault in wf.HTTP_FAULTS and self.shape.stream:
            status, body = self.shape.http_fault_body(self.fault)
            self.conn.respond(status, body, self.shape.json_type, done=self)
            return
        if self.fault == "hang":
            return
        if self.shape.stream:
            self.conn.write_head(200, self.shape.stream_type)
        self._schedule()

    def _schedule(self) -> None:
        st = self.conn.state
        step = st.cfg.chunk_tokens if self.shape.stream else self.n
        last = min(self.sent + step, self.n) - 1
        if st.cfg.batched:
            if not self.admitted:
                return  # admit() schedules it once a slot is free
            while len(self.due) <= last:
                # The gap after a token depends on the batch when that token is written: now.
                gap = self.itl_s + st.cfg.itl_growth_s * (st.active - 1) + self._noise()
                self.due.append(self.due[-1] + max(gap, 0.0))
        self.handle = self.loop.call_at(self.due[last], self._tick)

    def _tick(self) -> None:
        self.handle = None
        if self.done:
            return
        st = self.conn.state
        if not self.shape.stream:
            self.first_ns = _now()
            st.observe_ttft((self.first_ns - self.recv_ns) / 1e9)
            self.sent = self.n
            whole = self.shape.whole(self.n, self.first_ns - self.recv_ns)
            self.conn.respond(200, whole, self.shape.json_type, done=self)
            return
        count = min(st.cfg.chunk_tokens, self.n - self.sent)
        start = self.sent
        self.sent += count
        final = self.sent >= self.n
        parts: list[bytes] = self.shape.opening() if start == 0 else []
        if self.fault == "malformed" and start <= self.n // 2 < self.sent:
            parts.append(self.shape.broken())
        parts += self.shape.tokens(start, count, final, eos=self.fault == "early-eos")
        now = _now()
        if final:
            first = self.first_ns or now
            parts += self.shape.closing(self.n, now - self.recv_ns, first - self.recv_ns)
        if start == 0:
            self.first_ns = now
            st.observe_ttft((now - self.recv_ns) / 1e9)
        if st.cfg.stamp_tokens:
            self.token_ns.append(now)
        if final:
            self.log()  # before the last bytes leave: a client that reads the log then finds the entry
        self.conn.write_chunks(parts, last=final)
        if self.fault == "truncate" and self.sent >= self.n // 2:
            self.conn.transport.close()  # no [DONE], no closing chunk
            self.finish(aborted=True)
            return
        if final:
            self.finish()
        else:
            self._schedule()

    def finish(self, aborted: bool = False) -> None:
        if self.done:
            return
        self.done = True
        if self.handle is not None:
            self.handle.cancel()
        st = self.conn.state
        st.running -= 1
        st.generation_tokens += self.sent
        if self.admitted:
            self.admitted = False
            st.active -= 1
            st.admit_waiting()
        elif st.cfg.batched and self in st.waiting:
            st.waiting.remove(self)
        self.log(aborted)
        if not aborted:
            st.finished += 1
            if st.cfg.die_after is not None and st.finished >= st.cfg.die_after:
                if st.log is not None:
                    st.log.flush()
                print(f"detserver: --fault die-after={st.cfg.die_after} reached, exiting", flush=True)
                os._exit(3)

    def log(self, aborted: bool = False) -> None:
        """Append this request's stamps to the stamp log, once."""
        st = self.conn.state
        if self.logged:
            return
        self.logged = True
        if st.log is not None and (self.first_ns or aborted):
            entry: dict[str, Any] = {
                "id": self.request_id,
                "seq": self.seq,
                "recv_ns": self.recv_ns,
                "first_ns": self.first_ns or None,
                "end_ns": _now(),
                "tokens": self.sent,
            }
            if aborted:
                entry["aborted"] = True
            if self.prompt is not None:
                entry["prompt"] = self.prompt
                entry["stream"] = self.shape.stream
            if st.cfg.stamp_tokens:
                entry["token_ns"] = self.token_ns
            st.log.write(json.dumps(entry, separators=(",", ":")) + "\n")


class Connection(asyncio.Protocol):
    """HTTP/1.1 server side of one connection: keep-alive, no pipelining."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.buf = b""
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.busy: Generation | bool = False
        self.close_after = False
        self.go = False  # answer in Go's header style (Ollama paths)
        self.served = 0  # requests answered on this connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if isinstance(self.busy, Generation):
            self.busy.finish(aborted=not self.busy.done)
        self.busy = False

    def data_received(self, data: bytes) -> None:
        recv_ns = _now()
        self.buf += data
        if not self.busy:
            self._next(recv_ns)

    def _next(self, recv_ns: int) -> None:
        head_end = self.buf.find(b"\r\n\r\n")
        if head_end < 0:
            return
        lines = self.buf[:head_end].decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        size = int(headers.get("content-length", "0") or 0)
        if len(self.buf) < head_end + 4 + size:
            return
        body = self.buf[head_end + 4 : head_end + 4 + size]
        self.buf = self.buf[head_end + 4 + size :]
        method, _, rest = lines[0].partition(" ")
        path = rest.split(" ", 1)[0].split("?", 1)[0]
        self.close_after = headers.get("connection", "").lower() == "close"
        self.served += 1
        limit = self.state.cfg.max_requests_per_connection
        if limit and self.served >= limit:
            self.close_after = True  # says Connection: close and closes after this answer
        if self.state.cfg.fault == "drop-reused" and self.served > 1:
            # A kept-alive connection closed just as a request went out on it: no answer at all.
            self.transport.close()
            return
        self.go = path.startswith("/api/")
        self.busy = True
        self._route(method, path, headers, body, recv_ns)

    def _route(self, method: str, path: str, headers: dict[str, str], raw: bytes, recv_ns: int) -> None:
        st = self.state
        wanted = st.cfg.authorization
        if wanted is not None and path.startswith("/v1/") and headers.get("authorization") != wanted:
            self.respond(401, b'{"error":"Unauthorized"}', "application/json")
            return
        api = wf.GENERATE.get(path)
        if api is not None and method == "POST":
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                self.respond(400, b'{"error":"invalid JSON body"}', "application/json")
                return
            gen = Generation(self, api, body, headers.get("x-request-id", ""), recv_ns)
            self.busy = gen
            gen.start()
            return
        if path == "/tokenize" and method == "POST":
            status, payload = wf.tokenize(raw)
            self.respond(status, payload, "application/json")
            return
        static = wf.static(path, st.cfg.model)
        if static is not None:
            self.respond(200, static, "application/json")
        elif path == "/health":
            self.respond(200, b"", "application/json")
        elif path == "/metrics":
            self.respond(200, st.metrics(), "text/plain; version=0.0.4; charset=utf-8")
        else:
            self.respond(404, b'{"detail":"Not Found"}', "application/json")

    def write_head(self, status: int, ctype: str) -> None:
        self.transport.write(
            wf.head(status, ctype, self.state.date(), None, close=self.close_after, go=self.go)
        )

    def write_chunks(self, parts: list[bytes], last: bool) -> None:
        out = [b"%x\r\n%b\r\n" % (len(p), p) for p in parts]
        if last:
            out.append(b"0\r\n\r\n")
        self.transport.write(b"".join(out))
        if last:
            self._done()

    def respond(self, status: int, body: bytes, ctype: str, done: Generation | None = None) -> None:
        if done is not None:
            done.log()
        self.transport.write(
            wf.head(status, ctype, self.state.date(), len(body), close=self.close_after, go=self.go) + body
        )
        if done is not None:
            done.finish()
        self._done()

    def _done(self) -> None:
        if isinstance(self.busy, Generation) and not self.busy.done:
            self.busy.finish()
        self.busy = False
        if self.close_after:
            self.transport.close()
        elif self.buf:
            self._next(_now())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="detserver", description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    p.add_argument("--ttft-ms", type=float, default=63.5)
    p.add_argument("--itl-ms", type=float, default=10.0)
    p.add_argument("--itl-scale", type=float, default=1.0, help="multiply every ITL (a slowdown)")
    p.add_argument("--jitter-ms", type=float, default=0.0, help="stddev of Gaussian noise on TTFT and ITL")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="detserver")
    p.add_argument(
        "--chunk-tokens", type=int, default=1, help="tokens per streamed chunk (like vLLM under load)"
    )
    p.add_argument("--stamp-log", default=None, help="JSONL file of per-request server stamps")
    p.add_argument("--stamp-tokens", action="store_true", help="also log every token write stamp")
    p.add_argument("--fault", default=None, help=f"one of {', '.join(FAULTS)}, die-after=N")
    p.add_argument("--fault-every", type=int, default=1, help="apply --fault to every N-th request only")
    p.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop; asyncio (default) never fires a timer early, uvloop's may by up to 1 ms",
    )
    p.add_argument("--slow-itl-ms", type=float, default=1000.0, help="ITL of --fault slow")
    p.add_argument(
        "--api-key-env", default=None, help="require Authorization: Bearer $VAR on /v1/* (401 otherwise)"
    )
    p.add_argument(
        "--basic-auth-env",
        default=None,
        help="require HTTP basic auth with $VAR (user:password) on /v1/* (401 otherwise)",
    )
    p.add_argument("--log-prompts", action="store_true", help="also log each request's prompt text")
    p.add_argument(
        "--max-batch", type=int, default=0, help="requests generating at once; later ones wait (0: no limit)"
    )
    p.add_argument(
        "--itl-growth-ms",
        type=float,
        default=0.0,
        help="each token's gap grows by this much per other request generating (batched mode)",
    )
    p.add_argument(
        "--max-requests-per-connection",
        type=int,
        default=0,
        help="answer N requests on a kept-alive connection, the last with Connection: close (0: no limit)",
    )
    return p.parse_args(argv)


async def serve(ns: argparse.Namespace) -> None:
    cfg = Config(ns)
    log = open(ns.stamp_log, "a", buffering=1) if ns.stamp_log else None  # noqa: SIM115 - process lifetime
    state = State(cfg, log)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(state), "127.0.0.1", ns.port, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    print(f"detserver listening on http://127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    ns = parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        if ns.loop == "uvloop":
            import uvloop

            uvloop.run(serve(ns))
        else:
            asyncio.run(serve(ns))
    sys.stdout.flush()


if __name__ == "__main__":
    main()

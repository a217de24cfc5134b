"""The session's servers: one per model, started when first needed, resized by a restart.

Servers are sized at collection from the tests' parameters; a run whose
literal arguments need more slots or context than its server was started
with gets ``ServerPool.ensure``: the server is restarted with enough (one
progress line says so), or, where an option the user gave pins the size, the
run is refused before it sends anything with a sentence naming that option.
A run beyond the model's own context is refused too. Servers we attach to
(``--llm-base-url``) are measured as they are: their size is not ours to know.

Each model's server is handed out as a ``LiveServer``, which follows restarts,
so a test holding ``llm_server`` always sees the server that now runs.
The fit check decides whether a model may start at all (``DoesNotFit``).

This module starts, restarts and stops servers; it must not measure, and
stops a process only through its own ``stop`` (by PID and process group).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pytest_llmperf.errors import DoesNotFit, LlmPerfError, ServerDiedError, TooBig
from pytest_llmperf.records import Capabilities, Progress
from pytest_llmperf.servers.base import LOG_TAIL_LINES, LaunchRequest, Server
from pytest_llmperf.servers.models import ModelSpec

LABELS = {"llamacpp": "llama-server", "vllm": "vLLM", "ollama": "Ollama", "openai": "the endpoint"}
"""How messages name each backend's server."""

# Backend knobs (--llm-server-option) that fix a server's size: a restart cannot change them.
SLOT_KNOBS = ("max_num_seqs",)
CONTEXT_KNOBS = ("max_model_len",)

RequestFor = Callable[[ModelSpec, int, int], LaunchRequest]
"""``request_for(spec, slots, context_tokens)``: the launch request for a model at that size."""
Launch = Callable[[str, LaunchRequest], Server]
"""``launch(backend_name, request)``: start (or attach to) a server."""
FitCheck = Callable[[ModelSpec, str, int, int], str | None]
"""``fits(spec, backend, slots, context_tokens)``: why it cannot run here, or ``None``."""


class LiveServer:
    """The model's current server, across restarts: what ``llm_server`` hands to tests."""

    def __init__(self, server: Server) -> None:
        self.current = server

    def __getattr__(self, name: str) -> Any:
        # Backend-specific attributes (``process``, ``slots``) read through to the current server.
        return getattr(self.current, name)

    def __repr__(self) -> str:
        return f"LiveServer({self.current!r})"

    @property
    def backend(self) -> str:
        return self.current.backend

    @property
    def engine(self) -> str:
        return self.current.engine

    @property
    def engine_version(self) -> str | None:
        return self.current.engine_version

    @property
    def model(self) -> str:
        return self.current.model

    @property
    def base_url(self) -> str:
        return self.current.base_url

    @property
    def capabilities(self) -> Capabilities:
        return self.current.capabilities

    @property
    def headers(self) -> Mapping[str, str]:
        return self.current.headers

    @property
    def pid(self) -> int | None:
        return self.current.pid

    def check_alive(self) -> None:
        self.current.check_alive()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return self.current.log_tail(lines)

    def stop(self) -> None:
        self.current.stop()


def startup_seconds(server: Server) -> float | None:
    """Seconds from the server's launch to healthy, without any build before it, where known
    (``StartedServer.startup_s``; an attached server has none)."""
    value = getattr(server, "startup_s", None)
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


@dataclass(frozen=True)
class PoolSetup:
    """What a ``ServerPool`` works with: its collaborators, and the size new servers get at first.

    ``pinned_slots`` names the option that fixes the slots (a restart cannot
    change them); ``options`` are the backend knobs (``--llm-server-option``);
    ``attached`` says (per model, or for all) that a server is attached to,
    not started, so its size is not ours to check.
    """

    specs: Mapping[str, ModelSpec]
    backend_for: Callable[[str], str]
    request_for: RequestFor
    launch: Launch
    fits: FitCheck
    progress: Progress
    slots: int
    context_tokens: int
    pinned_slots: str | None = None
    options: Mapping[str, str] | None = None
    attached: bool | Callable[[str], bool] = False


@dataclass
class _Size:
    slots: int
    context_tokens: int


class ServerPool:
    """One server per model; ``slots`` and ``context_tokens`` are the sizes new servers get."""

    def __init__(self, setup: PoolSetup) -> None:
        self._specs = setup.specs
        self._backend_for = setup.backend_for
        self._request_for = setup.request_for
        self._launch = setup.launch
        self._fits = setup.fits
        self._progress = setup.progress
        self.size = _Size(setup.slots, setup.context_tokens)
        self._pinned_slots = setup.pinned_slots
        self._options = dict(setup.options or {})
        self._attached = setup.attached
        self.servers: dict[str, LiveServer] = {}
        self.dead: dict[str, str] = {}
        self._lock = threading.Lock()

    def label(self, model: str) -> str:
        """``llama-server``, ``vLLM``, ...: how messages name the model's server."""
        backend = self._backend_for(model)
        return LABELS.get(backend, f"the {backend} server")

    # -- start and stop -----------------------------------------------------------------------

    def start(self, model: str) -> LiveServer:
        server = self._start(model)
        live = LiveServer(server)
        with self._lock:
            self.servers[model] = live
        return live

    def _start(self, model: str) -> Server:
        spec, backend = self._specs[model], self._backend_for(model)
        slots, context = self.size.slots, self.size.context_tokens
        attached = self._attached(model) if callable(self._attached) else self._attached
        if not attached:
            reason = self._fits(spec, backend, slots, context)
            if reason is not None:
                raise DoesNotFit(reason)
        started = time.monotonic()
        server = self._launch(backend, self._request_for(spec, slots, context))
        pid = f"pid {server.pid}" if server.pid is not None else "attached"
        took = startup_seconds(server)
        took = took if took is not None else time.monotonic() - started
        self._progress(f"server started for {model} ({backend}, {pid}, {server.base_url}) in {took:.1f} s")
        return server

    def stop(self, model: str) -> None:
        with self._lock:
            live = self.servers.pop(model, None)
        if live is not None:
            live.stop()
            self._progress(f"server stopped for {model}")

    def close(self) -> None:
        """Stop every server, whatever one of them raises: the session is ending."""
        with self._lock:
            servers = list(self.servers.values())
            self.servers.clear()
        for live in servers:
            with contextlib.suppress(Exception):
                live.stop()

    def check(self, model: str, server: Server) -> None:
        """Error fast for a model whose server already died; detect a fresh death."""
        if model in self.dead:
            raise ServerDiedError(self.dead[model])
        try:
            server.check_alive()
        except ServerDiedError as exc:
            self.dead[model] = str(exc)
            raise

    # -- the size a run needs -------------------------------------------------------------------

    def ensure(self, model: str, concurrency: int, context_tokens: int) -> Server:
        """The model's server, restarted first if it has fewer slots or less context than asked."""
        spec, live = self._specs[model], self.servers[model]
        if spec.context is not None and context_tokens > spec.context:
            raise TooBig(
                "context",
                f"needs {context_tokens} tokens of context, beyond the {spec.context} of {spec.name}; "
                "ask for fewer tokens",
            )
        slots = getattr(live.current, "slots", None)
        context = getattr(live.current, "slot_context_tokens", None)
        short_slots = isinstance(slots, int) and concurrency > slots
        short_context = isinstance(context, int) and context_tokens > context
        if live.pid is None or not (short_slots or short_context):
            return live
        self._refuse_pinned(concurrency, context_tokens, short_slots, short_context)
        size = _Size(max(self.size.slots, concurrency), max(self.size.context_tokens, context_tokens))
        # Checked before the running server is stopped: a size that cannot fit keeps it running.
        reason = self._fits(spec, self._backend_for(model), size.slots, size.context_tokens)
        if reason is not None:
            what: Literal["slots", "context"] = "slots" if short_slots else "context"
            raise TooBig(what, f"would need a bigger server than this machine holds: {reason}")
        changes = []
        if short_slots:
            changes.append(f"{concurrency} slots (was {slots})")
        if short_context:
            changes.append(f"room for {context_tokens} tokens per slot (was {context})")
        self._progress(f"restarting {self.label(model)} for {model} with {' and '.join(changes)} ...")
        self.size = size
        live.stop()
        try:
            live.current = self._start(model)
        except ServerDiedError as exc:
            self.dead[model] = str(exc)
            raise
        except LlmPerfError as exc:
            self.dead[model] = f"{self.label(model)} for {model} could not restart: {exc}"
            raise
        now_slots = getattr(live.current, "slots", None)
        now_context = getattr(live.current, "slot_context_tokens", None)
        if (isinstance(now_slots, int) and concurrency > now_slots) or (
            isinstance(now_context, int) and context_tokens > now_context
        ):
            raise TooBig(
                "slots" if short_slots else "context",
                f"the restarted server still has {now_slots} slots of {now_context} tokens: "
                "an --llm-server-arg fixes its size; drop it or ask for less",
            )
        return live

    def _refuse_pinned(self, concurrency: int, context_tokens: int, slots: bool, context: bool) -> None:
        if slots and self._pinned_slots is not None:
            raise TooBig(
                "slots",
                f"needs {concurrency} server slots, but {self._pinned_slots} fixes the server at "
                f"{self.size.slots}; raise it or drop it",
            )
        for knob in SLOT_KNOBS if slots else ():
            if knob in self._options:
                raise TooBig(
                    "slots",
                    f"needs {concurrency} server slots, but --llm-server-option {knob}="
                    f"{self._options[knob]} fixes them; raise it or drop it",
                )
        for knob in CONTEXT_KNOBS if context else ():
            if knob in self._options:
                raise TooBig(
                    "context",
                    f"needs {context_tokens} tokens of context, but --llm-server-option {knob}="
                    f"{self._options[knob]} fixes it; raise it to at least {context_tokens}",
                )

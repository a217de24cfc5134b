"""The server pool's decisions: when a run gets a restarted server, and when it is refused.

The servers here are stand-ins that record what they were asked for: these
tests are about the pool's choices (restart, refuse, name the option), which
need no engine. tests/plugin/test_server_sizing.py restarts a real llama-server
and reads the slots it really serves from its own metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pytest_llmperf.errors import DoesNotFit, ServerDiedError, ServerStartError, TooBig
from pytest_llmperf.records import Capabilities
from pytest_llmperf.servers.base import LaunchRequest, Server
from pytest_llmperf.servers.models import ModelSpec
from pytest_llmperf.servers.pool import PoolSetup, ServerPool

CAPS = Capabilities(api="completions", exact_output=True, usage_in_stream=True)
SPEC = ModelSpec(name="m", context=32768, default_backend="llamacpp")


@dataclass(eq=False)
class StandIn:
    """Records its size and whether it was stopped; ``pid`` ``None`` means attached."""

    slots: int | None
    slot_context_tokens: int | None
    pid: int | None = 1
    stopped: bool = False
    backend: str = "llamacpp"
    engine: str = "llama.cpp"
    engine_version: str | None = None
    model: str = "m"
    base_url: str = "http://127.0.0.1:1"
    capabilities: Capabilities = CAPS
    headers: Mapping[str, str] = field(default_factory=dict)

    def check_alive(self) -> None:
        if self.stopped:
            raise ServerDiedError("llama-server for m (pid 1) exited with code -9 (log x)")

    def log_tail(self, lines: int = 40) -> str:
        return ""

    def stop(self) -> None:
        self.stopped = True


@dataclass
class Harness:
    launched: list[LaunchRequest] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    servers: list[StandIn] = field(default_factory=list)
    fits: bool = True
    attached: bool = False
    fail_start: bool = False

    def pool(self, *, pinned: str | None = None, options: Mapping[str, str] | None = None) -> ServerPool:
        def launch(_backend: str, request: LaunchRequest) -> Server:
            if self.fail_start and self.launched:
                raise ServerStartError("llama-server for m exited with code 1 before it became healthy")
            self.launched.append(request)
            pid = None if self.attached else 1
            server = StandIn(request.max_concurrency, request.max_context + 64, pid=pid)
            self.servers.append(server)
            return server

        return ServerPool(
            PoolSetup(
                specs={"m": SPEC},
                backend_for=lambda _model: "llamacpp",
                request_for=lambda spec, slots, context: LaunchRequest(spec, slots, context, Path("/tmp")),
                launch=launch,
                fits=lambda _spec, _backend, slots, _context: (
                    None if self.fits else f"{slots} slots need 99 GB"
                ),
                progress=self.lines.append,
                slots=4,
                context_tokens=2048,
                pinned_slots=pinned,
                options=options,
            )
        )


def test_a_run_within_the_servers_size_gets_it_as_it_is() -> None:
    h = Harness()
    pool = h.pool()
    live = pool.start("m")
    assert pool.ensure("m", 4, 2112) is live
    assert len(h.launched) == 1
    assert h.lines == ["server started for m (llamacpp, pid 1, http://127.0.0.1:1) in 0.0 s"]


def test_more_slots_restart_the_server_and_the_fixture_value_follows() -> None:
    h = Harness()
    pool = h.pool()
    live = pool.start("m")
    first = live.current
    assert pool.ensure("m", 8, 100) is live
    assert h.lines[1] == "restarting llama-server for m with 8 slots (was 4) ..."
    assert isinstance(first, StandIn)
    assert first.stopped
    assert live.current is h.servers[1]
    assert live.slots == 8  # attributes read through to the current server
    assert (h.launched[1].max_concurrency, h.launched[1].max_context) == (8, 2048)


def test_more_context_restarts_with_room_for_the_longest_case_and_keeps_the_slots() -> None:
    h = Harness()
    pool = h.pool()
    pool.start("m")
    pool.ensure("m", 8, 100)
    pool.ensure("m", 1, 3004)
    assert h.lines[-2] == "restarting llama-server for m with room for 3004 tokens per slot (was 2112) ..."
    assert (h.launched[-1].max_concurrency, h.launched[-1].max_context) == (8, 3004)


def test_beyond_the_models_own_context_is_refused() -> None:
    h = Harness()
    pool = h.pool()
    pool.start("m")
    with pytest.raises(TooBig, match="needs 40004 tokens of context, beyond the 32768 of m; ask for fewer"):
        pool.ensure("m", 1, 40004)
    assert len(h.launched) == 1


def test_a_size_the_user_pinned_is_named_not_restarted() -> None:
    h = Harness()
    pool = h.pool(pinned="--llm-max-concurrency=4", options={"max_model_len": "2048"})
    pool.start("m")
    with pytest.raises(
        TooBig, match=r"needs 8 server slots, but --llm-max-concurrency=4 fixes the server at 4"
    ):
        pool.ensure("m", 8, 100)
    with pytest.raises(
        TooBig, match=r"needs 3004 tokens of context, but --llm-server-option max_model_len=2048"
    ):
        pool.ensure("m", 1, 3004)
    assert len(h.launched) == 1
    assert not h.servers[0].stopped


def test_a_size_that_does_not_fit_keeps_the_running_server() -> None:
    h = Harness()
    pool = h.pool()
    pool.start("m")
    h.fits = False
    with pytest.raises(
        TooBig, match="would need a bigger server than this machine holds: 64 slots need 99 GB"
    ):
        pool.ensure("m", 64, 100)
    assert not h.servers[0].stopped


def test_a_model_that_does_not_fit_at_all_is_not_started() -> None:
    h = Harness(fits=False)
    with pytest.raises(DoesNotFit, match="4 slots need 99 GB"):
        h.pool().start("m")
    assert h.launched == []


def test_an_attached_server_is_measured_as_it_is() -> None:
    h = Harness(attached=True)
    pool = h.pool()
    live = pool.start("m")
    assert pool.ensure("m", 64, 3004) is live
    assert len(h.launched) == 1


def test_a_restart_that_fails_leaves_the_model_dead_for_its_later_tests() -> None:
    h = Harness(fail_start=True)
    pool = h.pool()
    live = pool.start("m")
    with pytest.raises(ServerStartError):
        pool.ensure("m", 8, 100)
    with pytest.raises(
        ServerDiedError, match="llama-server for m could not restart: llama-server for m exited"
    ):
        pool.check("m", live)


def test_a_dead_server_is_remembered() -> None:
    pool = Harness().pool()
    live = pool.start("m")
    live.stop()
    for _ in range(2):
        with pytest.raises(ServerDiedError, match="exited with code -9"):
            pool.check("m", live)

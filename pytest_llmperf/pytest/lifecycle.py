"""The session's servers: which models, where they run, started and stopped once each.

``ServerLifecycle`` looks the session's models up in the registry (with the
pyproject's overrides), decides each model's backend and endpoint, and hands
the sizes and launch callables to a ``ServerPool`` (one server per model,
started when its first test needs it, restarted bigger when a run needs
more, stopped after its last test). ``Placement`` decides each server's and
client's cores. Every server is stopped on SIGTERM, Ctrl-C or exit: SIGTERM
becomes a ``KeyboardInterrupt`` (pytest then tears fixtures down and writes
results), and ``close`` is registered with ``atexit``.

Server logs go under pytest's base temporary directory (``llmperf-logs``),
which the ``llm_server`` fixture hands over from ``tmp_path_factory``.
This module starts and stops servers; it must not measure or judge.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import signal
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from pytest_llmperf.config import Settings
from pytest_llmperf.errors import ConfigError, DoesNotFit
from pytest_llmperf.pytest.placement import Placement
from pytest_llmperf.servers import models as model_registry
from pytest_llmperf.servers.base import LaunchRequest, Server
from pytest_llmperf.servers.models import DEFAULT_MODEL, ModelSpec
from pytest_llmperf.servers.pool import PoolSetup, ServerPool

CANDIDATE = "@candidate"
"""The pool key of a model's A/B candidate is the model's name with this suffix."""
DEFAULT_MAX_CONCURRENCY = 4
DEFAULT_MAX_CONTEXT = 2048
ENGINES = {"llamacpp": "llama.cpp", "vllm": "vllm", "ollama": "ollama", "openai": "openai-compatible"}


def _raise(exc: BaseException) -> None:
    raise exc


@dataclass(frozen=True)
class Side:
    """How an A/B candidate's server differs from its baseline's: what it serves, where, with what."""

    baseline: str
    served: str
    base_url: str | None
    options: Mapping[str, str]


class ServerLifecycle:
    """One server per model for the session, and their cores; ``progress`` shows a line under capture."""

    def __init__(self, config: pytest.Config, settings: Settings, progress: Callable[[str], None]) -> None:
        self.settings = settings
        self.progress = progress
        self.registry = model_registry.registry_with_overrides(settings.pyproject.get("models", {}))
        self.model_names: tuple[str, ...] = settings.models or (DEFAULT_MODEL,)
        self.specs: dict[str, ModelSpec] = {name: self._lookup(name) for name in self.model_names}
        self.sides: dict[str, Side] = self._candidates()
        self.pool = ServerPool(
            PoolSetup(
                specs=self.specs,
                backend_for=self.backend_for,
                request_for=self._launch_request,
                launch=self._launch,
                fits=self._fits,
                progress=progress,
                slots=settings.max_concurrency or DEFAULT_MAX_CONCURRENCY,
                context_tokens=DEFAULT_MAX_CONTEXT,
                pinned_slots=f"--llm-max-concurrency={settings.max_concurrency}"
                if settings.max_concurrency
                else None,
                options=settings.server_options,
                attached=self.attached,
            )
        )
        controller = config.getoption("dist", "no") != "no" and not hasattr(config, "workerinput")
        self.placement = Placement(settings, self.backend_for, self.attached, xdist_controller=controller)
        # Fixed at configure time: pytest-benchmark compares machine_info at start and at save.
        self.server_info = {name: self._server_info(name) for name in self.model_names}
        self.basetemp: Path | None = None
        """pytest's base temporary directory (``tmp_path_factory``), set before the first server starts."""
        self._log_dir: Path | None = None
        self._previous_sigterm: Any = None

    # -- models -----------------------------------------------------------------------------

    def _lookup(self, name: str) -> ModelSpec:
        try:
            return model_registry.lookup(name, self.registry)
        except ConfigError:
            if self.settings.backend != "openai":
                raise
            # An endpoint serves whatever names it likes: an unknown one is its served name.
            return ModelSpec(name=name, default_backend="openai")

    def _candidates(self) -> dict[str, Side]:
        """Each model's A/B candidate as a pool entry of its own (``MODEL@candidate``), when one is asked."""
        cand = self.settings.candidate
        if cand is None:
            return {}
        sides: dict[str, Side] = {}
        for name in self.model_names:
            served = self._lookup(cand.model) if cand.model else self.specs[name]
            key = name + CANDIDATE
            self.specs[key] = dataclasses.replace(served, name=key)
            options = {} if cand.base_url else {**self.settings.server_options, **cand.server_options}
            sides[key] = Side(name, served.name, cand.base_url, options)
        return sides

    def candidate_key(self, model: str) -> str | None:
        """The pool key of ``model``'s A/B candidate; ``None`` in a session without one."""
        key = model + CANDIDATE
        return key if key in self.sides else None

    def candidate(self, model: str) -> Server:
        """``model``'s candidate server, started the first time a test asks for it."""
        key = model + CANDIDATE
        live = self.pool.servers.get(key)
        return live if live is not None else self.start(key)

    def backend_for(self, model: str) -> str:
        return self.settings.backend or self.specs[model].default_backend

    def base_url_for(self, model: str) -> str | None:
        """The endpoint a model is served at: ``--llm-base-url``, else its own ``base_url`` in pyproject.

        A candidate is served where ``--llm-candidate-base-url`` says, or started (``None``).
        """
        if model in self.sides:
            return self.sides[model].base_url
        return self.settings.base_url or self.specs[model].base_url

    def attached(self, model: str) -> bool:
        """True for a model on a server we attach to rather than start (its size is not ours to check)."""
        return self.base_url_for(model) is not None or self.backend_for(model) == "openai"

    def _server_info(self, model: str) -> dict[str, Any]:
        spec, backend = self.specs[model], self.backend_for(model)
        ids = {"llamacpp": spec.gguf, "vllm": spec.vllm, "ollama": spec.ollama}
        return {
            "backend": backend,
            "engine": ENGINES.get(backend, backend),
            "model_id": ids.get(backend) or spec.name,
            "model_revision": None,
        }

    # -- servers ----------------------------------------------------------------------------

    @property
    def log_dir(self) -> Path:
        if self._log_dir is None:
            base = self.basetemp if self.basetemp is not None else Path(tempfile.mkdtemp())
            self._log_dir = base / "llmperf-logs"
            self._log_dir.mkdir(parents=True, exist_ok=True)
        return self._log_dir

    def _launch_request(self, spec: ModelSpec, slots: int, context_tokens: int) -> LaunchRequest:
        s = self.settings
        side = self.sides.get(spec.name)
        # A candidate serves its own model under its own name, on its baseline's cores: the two
        # take turns, so they share the machine the way the deployment would have it.
        placed = side.baseline if side is not None else spec.name
        return LaunchRequest(
            model=dataclasses.replace(spec, name=side.served) if side is not None else spec,
            max_concurrency=slots, max_context=context_tokens, log_dir=self.log_dir,
            start_timeout_s=s.start_timeout_s, base_url=self.base_url_for(spec.name), api_key=s.api_key,
            auth_headers=s.auth_headers, executable=s.server_executable, extra_args=s.server_args,
            options=self._options(spec.name), cpu_cores=self.placement.plan(placed).server_cores,
        )  # fmt: skip

    def _options(self, model: str) -> Mapping[str, str]:
        side = self.sides.get(model)
        return side.options if side is not None else self.settings.server_options

    def _launch(self, backend_name: str, request: LaunchRequest) -> Server:
        from pytest_llmperf.servers.backends import get_backend

        return get_backend(backend_name, progress=self.progress).launch(request)

    def _fits(self, spec: ModelSpec, backend: str, slots: int, context_tokens: int) -> str | None:
        from pytest_llmperf.servers import fit

        verdict = fit.check(spec, backend, self._options(spec.name), context_tokens, slots)
        return None if verdict.fits else verdict.reason

    def start(self, model: str) -> Server:
        try:
            return self.pool.start(model)
        except DoesNotFit as exc:
            pytest.skip(str(exc))

    def stop(self, model: str) -> None:
        self.pool.stop(model)

    def check(self, model: str, server: Server) -> None:
        """Error fast for a model whose server already died; detect a fresh death."""
        self.pool.check(model, server)

    def close(self) -> None:
        self.pool.close()
        from pytest_llmperf.measure import workers

        workers.close_pool()

    # -- signals ----------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """Stop every server on SIGTERM (as a ``KeyboardInterrupt``) and at exit."""
        atexit.register(self.close)
        if threading.current_thread() is not threading.main_thread():
            return

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            # Become a KeyboardInterrupt: pytest then tears fixtures down and writes results.
            interrupt = KeyboardInterrupt(f"signal {signum}")
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                raise interrupt from None
            # A measurement's loop is running: raised here, the interrupt could land in a
            # transport callback, where uvloop swallows it and the run goes on. Raise it from
            # a loop callback instead, which ends the loop.
            loop.call_soon_threadsafe(_raise, interrupt)

        self._previous_sigterm = signal.signal(signal.SIGTERM, on_sigterm)

    def restore_signal_handlers(self) -> None:
        """Put back the SIGTERM handler we replaced (an in-process pytester run, say)."""
        if self._previous_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

"""Where each model's server and its client run: cores, client workers, GPUs of an xdist worker.

The session asks ``Placement.plan(model)`` once per model: the server's
kind (started on this host's CPUs, on a GPU, or an endpoint we attach to)
and the user's ``--llm-client-workers``, ``--llm-cpu-pinning`` and
``threads`` server option go into ``servers.pinning.plan``. The server is
launched on the plan's server cores; ``client_settings`` is what the test's
measurement runs with. ``--llm-gpus-per-worker`` sets this process's
``CUDA_VISIBLE_DEVICES`` to its xdist worker's GPUs, once, before any
server starts (servers inherit the environment).

This module decides and records; it must not start anything.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from pytest_llmperf.config import Settings
from pytest_llmperf.measure.runner import ClientSettings
from pytest_llmperf.servers import pinning


class Placement:
    """The session's cores and GPUs, decided once per model."""

    def __init__(
        self,
        settings: Settings,
        backend_for: Callable[[str], str],
        attached: Callable[[str], bool],
        *,
        xdist_controller: bool = False,
    ) -> None:
        self._settings = settings
        self._backend_for = backend_for
        self._attached = attached
        self._plans: dict[str, pinning.CpuPlan] = {}
        # The controller starts no server, and its workers inherit its environment: it splits nothing.
        self.gpus = None if xdist_controller else self._split_gpus()
        """This worker's GPUs under ``--llm-gpus-per-worker``, else ``None``."""

    def plan(self, model: str) -> pinning.CpuPlan:
        """Cores of ``model``'s server and of the client measuring it."""
        if model not in self._plans:
            threads = self._settings.server_options.get("threads", "")
            self._plans[model] = pinning.plan(
                pinning.session_cores(),
                workers=self._settings.client_workers,
                server=self._server_kind(model),
                server_threads=int(threads) if threads.isdigit() and int(threads) > 0 else None,
                pinning=self._settings.cpu_pinning,
            )
        return self._plans[model]

    def client_settings(self, model: str) -> ClientSettings:
        plan = self.plan(model)
        return ClientSettings(
            workers=plan.workers, keep_alive=self._settings.keep_alive, cores=plan.client_cores
        )

    def _server_kind(self, model: str) -> str:
        if self._attached(model):
            return "elsewhere"
        backend = self._backend_for(model)
        if backend == "llamacpp":
            return "host-cpu"
        if backend == "vllm":
            from pytest_llmperf.servers.hardware import read_gpus

            return "gpu" if read_gpus()[0] else "host-cpu"
        return (
            "gpu"  # a server we start whose engine may use a GPU (Ollama, a plug-in): its cores are its own
        )

    def _split_gpus(self) -> tuple[str, ...] | None:
        per_worker = self._settings.gpus_per_worker
        if per_worker is None:
            return None
        index, count = pinning.xdist_position(os.environ) or (0, 1)
        visible = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
        if not visible:
            from pytest_llmperf.servers.hardware import read_gpus

            visible = [str(i) for i in range(len(read_gpus()[0]))]
        mine = pinning.worker_gpus(per_worker, index, count, visible)
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
        return mine

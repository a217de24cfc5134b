"""Which cores the server and the client get: disjoint ones, where the machine allows.

A server that computes on this host's CPUs (llama.cpp, vLLM without a GPU)
and a client on the same cores take time from each other: the server's
threads spin on every core, the client's stamps wait for a core, and the
lag guard calls the run invalid (vLLM on 2 CPU cores made 7-10 of the 15
example cases invalid that way). ``plan`` splits the allowed cores: the
client gets the last ones (one per client worker, ``auto``: one unless the
server asked for fewer threads), the server the rest, and the server is
started on its cores with as many threads. A server we did not start, or one
that computes on a GPU, is not pinned; ``auto`` workers are then the cores it
leaves free. Under pytest-xdist each worker first takes its own contiguous
slice of the cores, and, with ``--llm-gpus-per-worker``, its own GPUs
(``worker_gpus``).

This module decides only: ``ManagedProcess`` applies the server's cores when
it starts the process, the client pins itself (``measure.runner``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pytest_llmperf.errors import ConfigError

GPU_SERVER_CORES = 2
"""Cores a GPU server we started keeps busy on this host: its API process and the engine's scheduler loop."""


@dataclass(frozen=True)
class CpuPlan:
    """The cores of one model's server and of the client measuring it."""

    server_cores: tuple[int, ...] | None
    """The server runs only here (``None``: wherever the OS puts it)."""
    client_cores: tuple[int, ...] | None
    """The client's event loop, or worker k on ``client_cores[k % len]`` (``None``: anywhere)."""
    workers: int
    """Client worker processes (1: the test's own process)."""
    note: str
    """Why the cores are split this way, in one line."""

    @property
    def server_threads(self) -> int | None:
        """The threads a pinned server gets: one per core it has."""
        return len(self.server_cores) if self.server_cores else None

    def as_json(self) -> dict[str, object]:
        """``extra_info["llm"]["client"]["pinning"]``."""
        return {
            "server_cores": list(self.server_cores) if self.server_cores is not None else None,
            "client_cores": list(self.client_cores) if self.client_cores is not None else None,
            "server_threads": self.server_threads,
            "note": self.note,
        }


def xdist_slice(cores: Sequence[int], index: int, count: int) -> tuple[int, ...]:
    """Worker ``index`` of ``count``'s contiguous share of ``cores`` (earlier workers get the remainder).

    More workers than cores share: a worker beyond the cores gets one core, round-robin.
    """
    ordered = sorted(cores)
    if count <= 1:
        return tuple(ordered)
    if count > len(ordered):
        return (ordered[index % len(ordered)],)
    base, extra = divmod(len(ordered), count)
    start = index * base + min(index, extra)
    return tuple(ordered[start : start + base + (1 if index < extra else 0)])


def plan(
    allowed: Sequence[int],
    *,
    workers: int | None,
    server: str,
    server_threads: int | None = None,
    pinning: bool = True,
) -> CpuPlan:
    """Split ``allowed`` cores between a server and the client.

    ``server`` says where the server computes: ``"host-cpu"`` (we start it
    and it computes on these cores), ``"gpu"`` (we start it on a GPU),
    ``"elsewhere"`` (an endpoint we attach to). ``workers`` is the user's
    count, ``None`` for ``auto``; ``server_threads`` the user's thread
    setting for the server, if any.
    """
    cores = tuple(sorted(allowed))
    n = len(cores)
    if server == "host-cpu" and pinning and n >= 2:
        if workers is not None:
            client = min(workers, n - 1)
        else:
            wanted = min(server_threads, n - 1) if server_threads else n - 1
            client = n - wanted
        server_cores, client_cores = cores[: n - client], cores[n - client :]
        return CpuPlan(
            server_cores,
            client_cores,
            workers if workers is not None else client,
            f"server on cores {_span(server_cores)}, client on {_span(client_cores)}",
        )
    if server == "host-cpu":
        why = "pinning is off" if not pinning else f"{n} core cannot be split"
        return CpuPlan(
            None, None, workers or 1, f"not pinned: {why}; the server and the client share the cores"
        )
    free = n if server == "elsewhere" else max(1, n - GPU_SERVER_CORES)
    where = "an endpoint we did not start" if server == "elsewhere" else "a GPU server"
    return CpuPlan(None, None, workers or free, f"not pinned: {where} computes off these cores")


def _span(cores: Sequence[int]) -> str:
    if len(cores) > 2 and cores[-1] - cores[0] == len(cores) - 1:
        return f"{cores[0]}-{cores[-1]}"
    return ",".join(str(c) for c in cores)


def xdist_position(environ: Mapping[str, str]) -> tuple[int, int] | None:
    """``(index, count)`` of this pytest-xdist worker (``gw2`` of 4 is ``(2, 4)``), or ``None``."""
    name = environ.get("PYTEST_XDIST_WORKER", "")
    count = environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not name.startswith("gw") or not name[2:].isdigit() or not count.isdigit():
        return None
    return int(name[2:]), int(count)


def session_cores(environ: Mapping[str, str] | None = None) -> tuple[int, ...]:
    """The cores this session may split: all it is allowed, or its xdist worker's slice of them."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    position = xdist_position(os.environ if environ is None else environ)
    if position is None:
        return tuple(allowed)
    return xdist_slice(allowed, *position)


def worker_gpus(per_worker: int, index: int, count: int, visible: Sequence[str]) -> tuple[str, ...]:
    """The GPUs (``CUDA_VISIBLE_DEVICES`` entries) xdist worker ``index`` of ``count`` gets.

    Raises ``ConfigError`` when the machine has fewer than ``per_worker * count``.
    """
    needed = per_worker * count
    if len(visible) < needed:
        raise ConfigError(
            f"--llm-gpus-per-worker {per_worker} with {count} pytest-xdist workers needs {needed} GPUs, "
            f"but {len(visible)} are visible; use -n {max(1, len(visible) // per_worker)} "
            "or fewer GPUs per worker"
        )
    return tuple(visible[index * per_worker : (index + 1) * per_worker])

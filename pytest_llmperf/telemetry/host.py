"""CPU and memory readers through psutil: per-core load, system memory, the server's process tree.

Each reader keeps its previous reading and returns what happened since, so
the sampler only aggregates. Per-core utilization is computed from
``psutil.cpu_times(percpu=True)`` deltas here rather than with
``psutil.cpu_percent``, whose hidden module-level state any other caller in
the process would disturb. The arithmetic (``core_percentages``) is a pure
function, tested with exact numbers.

The server's figures are a sum over its process tree (the server and every
descendant: vLLM's engine core, llama-server itself). Tree CPU% is CPU
seconds per wall second times 100, so 250 means two and a half cores busy,
as ``top`` shows it. Children come and go: membership is refreshed every
``refresh_s`` (walking ``/proc`` at 10 Hz would cost more than the rest of
the sampler), a process counts from the first reading that sees it, and a
process that exits takes its last partial interval with it. RSS is summed
per process, so pages shared between processes count once per process.
The kernel counts CPU time in 10 ms ticks, so at 10 Hz a single sample of a
one-thread process can read 90 or 110 %; means over many samples are exact.

These readers must not sleep, and must not touch any process they were not
given: they only read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import psutil

from pytest_llmperf.errors import ProcessGone


@dataclass(frozen=True)
class HostReading:
    """System load since the previous reading."""

    per_core_pct: tuple[float, ...]
    mem_used_bytes: int
    mem_total_bytes: int
    steal_pct: tuple[float, ...] | None = None
    """Per core, the share of the interval the hypervisor ran another VM (included in ``per_core_pct``)."""


@dataclass(frozen=True)
class TreeReading:
    """The server's process tree now; ``cpu_pct`` covers the time since the last reading."""

    pids: frozenset[int]
    cpu_pct: float
    rss_bytes: int


class HostReader(Protocol):
    def read(self) -> HostReading | None:
        """Load since the last call; ``None`` on the first call, which only sets the baseline."""
        ...


class TreeReader(Protocol):
    def read(self, now_s: float) -> TreeReading | None:
        """The tree at ``now_s`` (a monotonic clock); ``None`` on the baseline call.

        Raises ``errors.ProcessGone`` once the root process has exited.
        """
        ...


def busy_total(times: Mapping[str, float]) -> tuple[float, float]:
    """(busy, total) CPU seconds of one core, as psutil's ``cpu_percent`` counts them.

    Linux already includes guest time in user and nice, so it is taken out
    of the total; idle and iowait are the only non-busy states.
    """
    total = sum(times.values()) - times.get("guest", 0.0) - times.get("guest_nice", 0.0)
    busy = total - times.get("idle", 0.0) - times.get("iowait", 0.0)
    return busy, total


def core_percentages(
    before: Sequence[Mapping[str, float]], after: Sequence[Mapping[str, float]]
) -> tuple[float, ...]:
    """Per-core busy percentage between two ``cpu_times(percpu=True)`` readings.

    A core whose counters did not advance (an idle tick boundary, or a
    hot-unplugged core) reads 0. Values are clamped to 0..100 because the
    kernel's per-field counters are not updated atomically together.
    """
    if len(before) != len(after):
        raise ValueError(f"core count changed from {len(before)} to {len(after)}")
    out = []
    for b, a in zip(before, after, strict=True):
        busy_b, total_b = busy_total(b)
        busy_a, total_a = busy_total(a)
        d_total = total_a - total_b
        pct = 100.0 * (busy_a - busy_b) / d_total if d_total > 0 else 0.0
        out.append(min(100.0, max(0.0, pct)))
    return tuple(out)


def core_steal_percentages(
    before: Sequence[Mapping[str, float]], after: Sequence[Mapping[str, float]]
) -> tuple[float, ...] | None:
    """Per-core steal percentage between two readings; ``None`` where the kernel has no steal field."""
    if not before or any("steal" not in t for t in (*before, *after)):
        return None
    out = []
    for b, a in zip(before, after, strict=True):
        d_total = busy_total(a)[1] - busy_total(b)[1]
        pct = 100.0 * (a["steal"] - b["steal"]) / d_total if d_total > 0 else 0.0
        out.append(min(100.0, max(0.0, pct)))
    return tuple(out)


def _cpu_times_per_core() -> list[dict[str, float]]:
    return [dict(t._asdict()) for t in psutil.cpu_times(percpu=True)]


class PsutilHostReader:
    """Per-core CPU and system memory from psutil (``/proc/stat``, ``/proc/meminfo`` on Linux)."""

    def __init__(self, cpu_times: Callable[[], list[dict[str, float]]] = _cpu_times_per_core) -> None:
        self._cpu_times = cpu_times
        self._last: list[dict[str, float]] | None = None

    def read(self) -> HostReading | None:
        now = self._cpu_times()
        last, self._last = self._last, now
        if last is None or len(last) != len(now):
            # First call, or a core went on/offline: this reading is the new baseline.
            return None
        vm = psutil.virtual_memory()
        return HostReading(
            core_percentages(last, now), int(vm.used), int(vm.total), core_steal_percentages(last, now)
        )


class PsutilTreeReader:
    """CPU and RSS summed over one process and its descendants."""

    def __init__(self, root_pid: int, *, refresh_s: float = 1.0) -> None:
        try:
            self._root = psutil.Process(root_pid)
        except psutil.Error as exc:
            raise ProcessGone(
                f"server process {root_pid} not found ({exc}); no server_process figures"
            ) from exc
        self.root_pid = root_pid
        self._refresh_s = refresh_s
        self._procs: dict[int, psutil.Process] = {root_pid: self._root}
        self._cpu_s: dict[int, float] = {}
        self._last_now: float | None = None
        self._last_refresh: float | None = None

    def _gone(self) -> str:
        return (
            f"server process {self.root_pid} exited during the run; "
            "server_process figures cover the time before"
        )

    def _refresh(self, now_s: float) -> None:
        if self._last_refresh is not None and now_s - self._last_refresh < self._refresh_s:
            return
        self._last_refresh = now_s
        try:
            children = self._root.children(recursive=True)
        except psutil.Error:
            children = []
        # Keep the Process objects we have: psutil ties each to its create time,
        # so a reused PID shows up as a different process, not as ours.
        fresh = {self.root_pid: self._root}
        for child in children:
            fresh[child.pid] = self._procs.get(child.pid, child)
        self._procs = fresh

    def read(self, now_s: float) -> TreeReading | None:
        if not self._root.is_running():
            raise ProcessGone(self._gone())
        self._refresh(now_s)
        cpu_now: dict[int, float] = {}
        rss = 0
        for pid, proc in list(self._procs.items()):
            try:
                with proc.oneshot():
                    if pid == self.root_pid and proc.status() == psutil.STATUS_ZOMBIE:
                        # Exited but not yet reaped by whoever started it.
                        raise ProcessGone(self._gone())
                    times = proc.cpu_times()
                    mem = proc.memory_info()
            except psutil.Error:
                # Exited or unreadable since the last refresh: it leaves the tree.
                del self._procs[pid]
                continue
            cpu_now[pid] = times.user + times.system
            rss += int(mem.rss)
        if self.root_pid not in cpu_now:
            raise ProcessGone(self._gone())
        last_now, last_cpu = self._last_now, self._cpu_s
        self._last_now, self._cpu_s = now_s, cpu_now
        if last_now is None:
            return None
        elapsed = now_s - last_now
        used = sum(cpu - last_cpu[pid] for pid, cpu in cpu_now.items() if pid in last_cpu)
        pct = 100.0 * max(used, 0.0) / elapsed if elapsed > 0 else 0.0
        return TreeReading(frozenset(cpu_now), pct, rss)

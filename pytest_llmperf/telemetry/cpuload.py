"""CPU load: who used the CPU during a case (server, client, or someone else): "machine busy" evidence.

A server that shares its cores with another job measures the other job,
not itself: on a 2-core machine llama-server's TPOT went from ~22 ms to
150-377 ms beside a test suite, and the client noticed nothing. This module
splits the host's CPU time over the measured window into

* ``server_cores``: the server's process tree (what ``host.PsutilTreeReader`` reads),
* ``client_cores``: this process (the measuring event loop, the sampler thread)
  and the client's worker processes, where it runs some,
* ``steal_cores``: time the hypervisor gave to another VM (``steal`` in ``/proc/stat``),
* ``others_cores``: everything else that ran, ``busy - steal - server - client``,
* ``idle_cores``: what nobody used,

each in cores (CPU seconds per wall second: 1.0 is one core kept busy),
plus the threads the server asked for (llama.cpp's ``-t``/``-tb``), the CPU
clock against its maximum and thermal-throttle events where the kernel
exposes them. Whether those figures make the case invalid is the judge's
call (``judge.busy``); this module only measures, and reports a figure it
could not read as absent, never as zero. It must not sleep, and reads only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

import psutil

from pytest_llmperf.telemetry.running import RunningStat, rounded
from pytest_llmperf.telemetry.shapes import CpuLoadSummary, set_key

THREAD_FLAGS = ("-t", "--threads", "-tb", "--threads-batch")
"""llama.cpp's thread options; the largest value is what the server asked for."""


def requested_threads(cmdline: Sequence[str]) -> int | None:
    """The CPU threads a server's command line asks for, or ``None`` when it does not say.

    Reads llama.cpp's ``-t N``, ``--threads N``, ``-tb N``, ``--threads-batch N``
    (also ``--threads=N``); other engines size their thread pools elsewhere.
    """
    found: list[int] = []
    for i, arg in enumerate(cmdline):
        flag, sep, value = arg.partition("=")
        if flag not in THREAD_FLAGS:
            continue
        if not sep:
            value = cmdline[i + 1] if i + 1 < len(cmdline) else ""
        if value.strip().isdigit() and int(value) > 0:
            found.append(int(value))
    return max(found) if found else None


def server_threads(pid: int) -> int | None:
    """``requested_threads`` of a running process's command line; ``None`` if unreadable."""
    try:
        return requested_threads(psutil.Process(pid).cmdline())
    except psutil.Error:
        return None


class ClientReader(Protocol):
    def read(self, now_s: float) -> float | None:
        """Cores this process used since the last call; ``None`` on the first (baseline) call."""
        ...


class PsutilClientReader:
    """CPU of this process (every thread, not its children) and of ``extra_pids()``: the client.

    ``extra_pids`` names the client's worker processes (``measure.workers``);
    each counts from the first reading that sees it, and one that exits takes
    its last partial interval with it.
    """

    def __init__(self, pid: int | None = None, extra_pids: Callable[[], Iterable[int]] | None = None) -> None:
        self._proc = psutil.Process(pid if pid is not None else os.getpid())
        self._extra = extra_pids
        self._procs: dict[int, psutil.Process] = {self._proc.pid: self._proc}
        self._last: tuple[float, dict[int, float]] | None = None

    def _cpu(self) -> dict[int, float]:
        if self._extra is not None:
            for pid in self._extra():
                if pid not in self._procs:
                    try:
                        self._procs[pid] = psutil.Process(pid)
                    except psutil.Error:
                        continue
        used: dict[int, float] = {}
        for pid, proc in list(self._procs.items()):
            try:
                times = proc.cpu_times()
            except psutil.Error:
                if pid == self._proc.pid:
                    raise
                del self._procs[pid]  # a worker that exited
                continue
            used[pid] = times.user + times.system
        return used

    def read(self, now_s: float) -> float | None:
        used = self._cpu()
        last, self._last = self._last, (now_s, used)
        if last is None or now_s <= last[0]:
            return None
        spent = sum(max(cpu - last[1][pid], 0.0) for pid, cpu in used.items() if pid in last[1])
        return spent / (now_s - last[0])


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def throttle_count(root: Path = Path("/sys/devices/system/cpu")) -> int | None:
    """Thermal-throttle events so far, summed over cores and packages; ``None`` where not exposed.

    Intel's ``thermal_throttle/{core,package}_throttle_count`` count every
    time a core or package crossed its thermal limit; VMs do not show them.
    """
    total, seen = 0, False
    for folder in sorted(root.glob("cpu[0-9]*/thermal_throttle")):
        for name in ("core_throttle_count", "package_throttle_count"):
            value = _read_int(folder / name)
            if value is not None:
                total, seen = total + value, True
    return total if seen else None


def freq_ratio() -> float | None:
    """Mean over cores of the current clock over its maximum; ``None`` where cpufreq is not exposed."""
    try:
        per_core = psutil.cpu_freq(percpu=True)
    except (OSError, NotImplementedError, AttributeError):
        return None
    ratios = [f.current / f.max for f in per_core or () if f.max and f.current]
    return sum(ratios) / len(ratios) if ratios else None


class CpuLoadAggregate:
    """Running means of the CPU split, fed once per sample by the sampler."""

    def __init__(
        self,
        *,
        threads: int | None = None,
        throttle: Callable[[], int | None] = throttle_count,
        freq: Callable[[], float | None] = freq_ratio,
    ) -> None:
        self.threads = threads
        self._throttle = throttle
        self._freq = freq
        self._throttle_start: int | None = None
        self._throttle_end: int | None = None
        self.cores = 0
        self.busy = RunningStat()
        self.steal = RunningStat()
        self.idle = RunningStat()
        self.client = RunningStat()
        self.server = RunningStat()
        self.others = RunningStat()
        self.freq = RunningStat()

    def begin(self) -> None:
        self._throttle_start = self._throttle()

    def add(
        self,
        per_core_pct: Sequence[float],
        steal_pct: Sequence[float] | None,
        client_cores: float | None,
        server_cores: float | None,
    ) -> None:
        """One sample: host busy per core (steal included, as psutil counts it), and the parts we know."""
        self.cores = len(per_core_pct)
        busy_all = sum(per_core_pct) / 100.0
        steal = sum(steal_pct) / 100.0 if steal_pct is not None else 0.0
        busy = max(busy_all - steal, 0.0)
        self.busy.add(busy)
        self.steal.add(steal if steal_pct is not None else None)
        self.idle.add(max(self.cores - busy_all, 0.0))
        self.client.add(client_cores)
        self.server.add(server_cores)
        if client_cores is not None and server_cores is not None:
            # Samples of the three readers are a few microseconds apart and the kernel
            # counts in 10 ms ticks, so one sample can go slightly negative; means are exact.
            self.others.add(busy - client_cores - server_cores)
        self.freq.add(self._freq())

    def finish(self) -> None:
        self._throttle_end = self._throttle()

    def summary(self) -> CpuLoadSummary | None:
        if not self.busy.count:
            return None
        out: CpuLoadSummary = {
            "cores": self.cores,
            "samples": self.busy.count,
            "busy_cores_mean": _mean(self.busy),
        }
        for key, stat in (
            ("steal_cores_mean", self.steal),
            ("idle_cores_mean", self.idle),
            ("client_cores_mean", self.client),
            ("server_cores_mean", self.server),
        ):
            if stat.count:
                set_key(out, key, _mean(stat))
        if self.others.count:
            out["others_cores_mean"] = max(_mean(self.others), 0.0)
            out["others_cores_max"] = max(rounded(self.others.maximum) or 0.0, 0.0)
        if self.threads is not None:
            out["server_threads"] = self.threads
        if self.freq.count:
            out["freq_ratio_mean"] = _mean(self.freq)
        if self._throttle_start is not None and self._throttle_end is not None:
            out["throttle_events"] = max(self._throttle_end - self._throttle_start, 0)
        return out


def _mean(stat: RunningStat) -> float:
    return round(stat.total / stat.count, 3)

"""Levers for gate_quality.py: a real slowdown of llama-server, and a CPU hog beside it.

A slowdown has to be one the server itself suffers, so that the gate sees
what a slower release would look like, and not a busy machine (which must be
*invalid*, not a regression). Two levers, both on the server's own PID only:

* ``CgroupQuota``: the server moves into a cgroup whose CPU quota is a
  fraction of the machine (cgroup v2 ``cpu.max``, else v1
  ``cpu.cfs_quota_us``). The kernel throttles the server's threads and
  nothing else: no other process loses a cycle, so the busy-machine check
  stays quiet, and the slowdown is what the quota takes from the server's
  own CPU time. A short period (20 ms) keeps the throttling finer than one
  token.
* ``DutyCycle``: SIGSTOP for ``stop_ms`` then SIGCONT, every ``period_ms``,
  where cgroups are not writable. Coarser (the server stalls whole), but it
  works anywhere the server is our child.

``Hog`` starts busy-loop processes beside the server and stops them by PID.
Nothing here touches a process that the benchmark did not start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Protocol

import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 20_000


class Lever(Protocol):
    name: str

    def apply(self, pid: int) -> None: ...

    def release(self) -> None: ...


def cgroup_writable() -> str | None:
    """``"v2"`` or ``"v1"`` when a CPU cgroup can be made here, else ``None``."""
    v2 = CGROUP_ROOT / "cgroup.controllers"
    if v2.is_file() and "cpu" in v2.read_text().split() and os.access(CGROUP_ROOT, os.W_OK):
        return "v2"
    if (CGROUP_ROOT / "cpu" / "cpu.cfs_quota_us").is_file() and os.access(CGROUP_ROOT / "cpu", os.W_OK):
        return "v1"
    return None


class CgroupQuota:
    """The server's process (all its threads) in a cgroup limited to ``fraction`` of its cores.

    Its cores are the ones it may run on (a pinned llama-server: one of 2), not the machine's:
    a quota of 80% of 2 cores leaves a 1-core server all it had.
    """

    def __init__(self, fraction: float, version: str) -> None:
        self.fraction = fraction
        self.version = version
        self.name = f"cgroup {version} quota {fraction:.0%} of the server's cores"
        self.path = (CGROUP_ROOT if version == "v2" else CGROUP_ROOT / "cpu") / f"llmperf-gate-{os.getpid()}"

    def apply(self, pid: int) -> None:
        self.path.mkdir(exist_ok=True)
        cores = len(os.sched_getaffinity(pid))
        quota = int(self.fraction * cores * PERIOD_US)
        if self.version == "v2":
            (self.path / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        else:
            (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))
        (self.path / "cgroup.procs").write_text(str(pid))

    def release(self) -> None:
        # The server has exited by now (its session ended), so the group is empty.
        with contextlib.suppress(OSError):
            self.path.rmdir()


class DutyCycle:
    """SIGSTOP the server for ``stop_ms`` of every ``period_ms`` until released."""

    def __init__(self, fraction: float, period_ms: float = 100.0) -> None:
        self.stop_ms = (1 - fraction) * period_ms
        self.period_ms = period_ms
        self.name = f"SIGSTOP {self.stop_ms:.0f} ms of every {period_ms:.0f} ms"
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def apply(self, pid: int) -> None:
        def cycle() -> None:
            proc = psutil.Process(pid)
            while not self._done.is_set() and proc.is_running():
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(signal.SIGSTOP)
                time.sleep(self.stop_ms / 1000)
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(signal.SIGCONT)
                self._done.wait((self.period_ms - self.stop_ms) / 1000)

        self._thread = threading.Thread(target=cycle, daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()


def make_lever(fraction: float, kind: str = "auto") -> Lever:
    version = cgroup_writable()
    if kind in ("auto", "cgroup") and version is not None:
        return CgroupQuota(fraction, version)
    if kind == "cgroup":
        raise SystemExit("no writable CPU cgroup here (/sys/fs/cgroup); use --lever sigstop")
    return DutyCycle(fraction)


def watch_for_server(
    session: subprocess.Popen[bytes], lever: Lever, name: str = "llama-server"
) -> threading.Thread:
    """Apply ``lever`` to each ``name`` process the session starts, as soon as it appears."""

    def watch() -> None:
        seen: set[int] = set()
        root = psutil.Process(session.pid)
        while session.poll() is None:
            with contextlib.suppress(psutil.Error):
                for child in root.children(recursive=True):
                    if child.pid not in seen and child.name() == name:
                        seen.add(child.pid)
                        lever.apply(child.pid)
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


class Hog:
    """``count`` busy-loop processes for the ``with`` block (a CPU-bound job beside the server)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Hog:
        self.procs = [
            subprocess.Popen([sys.executable, "-c", "while True:\n    pass\n"]) for _ in range(self.count)
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(timeout=30)

"""The machine-wide cache of what we build once, and one build step run in view.

``cache_root()`` is where llama-server, the embedded model and the vLLM CPU
environment are kept (``$LLMPERF_CACHE_DIR``, else
``${XDG_CACHE_HOME:-~/.cache}/pytest-llmperf``); ``file_lock()`` makes
concurrent sessions wait for one builder. ``run_step()`` runs one slow
command (a download, a compile) with its output in a log file and a
progress line at least every ``report_every_s`` seconds, so no minute of a
first build is silent; for ninja's ``[n/m]`` lines the line carries a rough
estimate of the time left.

Every pipe and file it opens is closed before it returns, on every path: a
user's ``filterwarnings = ["error"]`` turns a leaked one into a failure.
This module must not start servers.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from pytest_llmperf.errors import BuildError
from pytest_llmperf.records import Progress

#: A line at least this often while a step runs; more often would flood a CI log.
REPORT_EVERY_S = 15.0
_NINJA_STEP = re.compile(rb"^\[(\d+)/(\d+)\]")


def cache_root() -> Path:
    """``$LLMPERF_CACHE_DIR``, else ``$XDG_CACHE_HOME/pytest-llmperf``, else ``~/.cache/pytest-llmperf``."""
    explicit = os.environ.get("LLMPERF_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "pytest-llmperf"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock across processes (pytest-xdist workers, parallel CI jobs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def time_left_s(elapsed_s: float, done: int, total: int) -> float | None:
    """Seconds left if the remaining steps take as long as the done ones did on average.

    Rough on purpose: compile steps differ in cost, and the machine's load
    changes. ``None`` before the first step is done.
    """
    if done <= 0 or total <= 0:
        return None
    return elapsed_s / done * max(0, total - done)


def duration(seconds: float) -> str:
    """``45 s``, ``3 min 05 s``: short enough for a progress line."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    return f"{whole // 60} min {whole % 60:02d} s"


def status_line(prefix: str, what: str, elapsed_s: float, step: tuple[int, int] | None) -> str:
    """One progress line: the step, the time it has run, and for ``[n/m]`` steps the time left."""
    if step is None:
        return f"{prefix}: {what}, {duration(elapsed_s)} so far"
    done, total = step
    left = time_left_s(elapsed_s, done, total)
    estimate = f", about {duration(left)} left" if left is not None else ""
    return f"{prefix}: {what} [{done}/{total}], {duration(elapsed_s)} so far{estimate}"


def run_step(
    argv: Sequence[str],
    log: Path,
    progress: Progress,
    what: str,
    *,
    prefix: str,
    report_every_s: float = REPORT_EVERY_S,
) -> float:
    """Run ``argv`` with its output appended to ``log``; return the seconds it took.

    A progress line starts the step, another follows at least every
    ``report_every_s`` while it runs (with ninja's step count and the time
    left when the output has one), and one ends it. A non-zero exit raises
    ``BuildError`` with the log's last lines.
    """
    started = time.monotonic()

    def report(step: tuple[int, int] | None) -> None:
        progress(status_line(prefix, what, time.monotonic() - started, step))

    progress(f"{prefix}: {what}")
    with open(log, "ab") as sink:
        sink.write(f"$ {' '.join(argv)}\n".encode())
        sink.flush()
        # The context manager closes the pipe and reaps the process on every path.
        with subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: an interrupted build leaves no compiler running
        ) as proc:
            try:
                _relay(proc, sink, report, report_every_s)
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()  # reaped now: an unreaped child is a ResourceWarning later
                raise
            code = proc.wait()
    took_s = time.monotonic() - started
    if code != 0:
        tail = "\n".join(log.read_text("utf-8", "replace").splitlines()[-30:])
        raise BuildError(f"{prefix} failed at '{what}' (exit {code}); log {log}, last lines:\n{tail}")
    progress(f"{prefix}: {what} done in {duration(took_s)}")
    return took_s


def _relay(
    proc: subprocess.Popen[bytes],
    sink: BinaryIO,
    report: Callable[[tuple[int, int] | None], None],
    report_every_s: float,
) -> None:
    """Copy the step's output into ``sink`` until it closes, calling ``report`` at least every
    ``report_every_s`` with the latest ninja ``[n/m]`` step seen (or ``None``)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    step: tuple[int, int] | None = None
    pending = b""
    next_report = time.monotonic() + report_every_s
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            # Wait for output, but wake up in time for the next line of a silent step.
            if selector.select(timeout=max(0.0, next_report - time.monotonic())):
                chunk = os.read(fd, 65536)
                if not chunk:
                    return
                sink.write(chunk)
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    found = _NINJA_STEP.match(line.strip())
                    if found:
                        step = (int(found[1]), int(found[2]))
            now = time.monotonic()
            if now >= next_report:
                report(step)
                next_report = now + report_every_s

"""One build step, run for real: small subprocesses stand in for the 6-minute llama-server build.

The step runner is what the first build shows a new user for minutes, under
their ``filterwarnings = ["error"]``: it must close everything it opens, say
something at least every few seconds while a step is silent, and estimate
the time left from ninja's ``[n/m]`` lines.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import warnings
from pathlib import Path

import psutil
import pytest

from pytest_llmperf.errors import BuildError
from pytest_llmperf.servers import buildstep, llamacpp_build

NINJA_LIKE = (
    "import time\nfor n in range(1, 5):\n    print(f'[{n}/8] Building CXX object ggml-{n}.o', flush=True)\n"
)


def run_quietly(
    argv: list[str], log: Path, **kwargs: float
) -> tuple[list[str], list[warnings.WarningMessage]]:
    """Run one step; return its progress lines and every warning raised meanwhile (unclosed pipes too)."""
    lines: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            buildstep.run_step(argv, log, lines.append, "compile", prefix="test build", **kwargs)
        finally:
            gc.collect()  # an unclosed pipe warns when it is collected
    return lines, caught


def test_a_step_closes_its_pipe_and_file_and_logs_the_output(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    lines, caught = run_quietly([sys.executable, "-c", NINJA_LIKE], log)
    assert [str(w.message) for w in caught] == []
    text = log.read_text()
    assert text.startswith(f"$ {sys.executable} -c ")
    assert "[4/8] Building CXX object ggml-4.o" in text
    assert lines[0] == "test build: compile"
    assert lines[-1].startswith("test build: compile done in ")


def test_the_llama_server_build_step_raises_no_warning(tmp_path: Path) -> None:
    """The llama-server builder's own step function, as the first build calls it."""
    log = tmp_path / "build.log"
    lines: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        took_s = llamacpp_build._run(
            [sys.executable, "-c", "print('configured')"], log, lines.append, "configure"
        )
        gc.collect()
    assert [str(w.message) for w in caught] == []
    assert took_s > 0
    assert lines[0] == "llama-server build: configure"
    assert "configured" in log.read_text()


def test_a_failed_step_raises_with_the_log_tail_and_leaks_nothing(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    script = "import sys\nprint('error: no compiler for you')\nsys.exit(3)"
    with pytest.raises(BuildError) as raised:
        run_quietly([sys.executable, "-c", script], log)
    message = str(raised.value)
    assert "test build failed at 'compile' (exit 3)" in message
    assert message.endswith("error: no compiler for you")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    assert [str(w.message) for w in caught] == []


def test_a_silent_step_still_reports_while_it_runs(tmp_path: Path) -> None:
    # Like pip downloading a 77 MB sdist: nothing on stdout for a while.
    lines, caught = run_quietly(
        [sys.executable, "-c", "import time; time.sleep(1.5)"], tmp_path / "log", report_every_s=0.3
    )
    assert caught == []
    during = lines[1:-1]
    assert len(during) >= 2, lines
    assert all(line.startswith("test build: compile, ") and line.endswith(" s so far") for line in during)


def test_ninja_steps_give_the_count_and_the_time_left(tmp_path: Path) -> None:
    script = NINJA_LIKE + "time.sleep(1.0)\n"
    lines, _ = run_quietly([sys.executable, "-c", script], tmp_path / "log", report_every_s=0.3)
    during = lines[1:-1]
    assert any("[4/8]" in line and "left" in line for line in during), lines


def test_an_interrupted_step_leaves_no_process_behind(tmp_path: Path) -> None:
    """Ctrl-C during the compile: the step's whole process group goes, compilers included."""
    log = tmp_path / "build.log"
    script = (
        "import os, subprocess, time\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        "print('pids', os.getpid(), child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )

    def interrupt_once_running(line: str) -> None:
        if line.endswith("so far") and "pids" in log.read_text():
            raise KeyboardInterrupt

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(KeyboardInterrupt):
            buildstep.run_step(
                [sys.executable, "-c", script],
                log,
                interrupt_once_running,
                "compile",
                prefix="t",
                report_every_s=0.2,
            )
        gc.collect()  # an unreaped child or open pipe warns when collected
    assert [str(w.message) for w in caught] == []
    pids = [int(pid) for pid in log.read_text().split("pids ", 1)[1].split()[:2]]
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.append(psutil.Process(pid))
    _, alive = psutil.wait_procs(procs, timeout=10)
    running = []
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.status() != psutil.STATUS_ZOMBIE:  # killed, waiting for init to reap it
                running.append(proc.pid)
    assert running == []


@pytest.mark.parametrize(
    ("elapsed_s", "done", "total", "left_s"),
    [(60.0, 20, 206, 558.0), (10.0, 206, 206, 0.0), (5.0, 0, 206, None), (1.0, 3, 0, None)],
)
def test_time_left_is_elapsed_per_step_times_the_steps_left(
    elapsed_s: float, done: int, total: int, left_s: float | None
) -> None:
    assert buildstep.time_left_s(elapsed_s, done, total) == left_s


def test_status_lines_read_well() -> None:
    assert buildstep.status_line("llama-server build", "compile", 66.0, (20, 206)) == (
        "llama-server build: compile [20/206], 1 min 06 s so far, about 10 min 14 s left"
    )
    assert buildstep.status_line("llama-server build", "download", 44.6, None) == (
        "llama-server build: download, 45 s so far"
    )


def test_the_sdist_download_builds_no_build_backend_from_source(tmp_path: Path) -> None:
    """``--no-binary :all:`` also built scikit-build-core and hatchling from source (minutes, silent)."""
    assert llamacpp_build.download_command(tmp_path) == [
        sys.executable, "-m", "pip", "download", "--no-deps",
        "--no-binary", "llama-cpp-python", "llama-cpp-python==0.3.36",
        "-d", str(tmp_path),
    ]  # fmt: skip


def test_cache_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLMPERF_CACHE_DIR", str(tmp_path / "explicit"))
    assert buildstep.cache_root() == tmp_path / "explicit"
    monkeypatch.delenv("LLMPERF_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert buildstep.cache_root() == tmp_path / "xdg" / "pytest-llmperf"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert buildstep.cache_root() == tmp_path / "home" / ".cache" / "pytest-llmperf"

"""Build llama.cpp's ``llama-server`` once per machine, from pinned official source.

No Linux wheel of ``llama-server`` on PyPI can be verified, but the
llama-cpp-python sdist carries the official llama.cpp tree under
``vendor/llama.cpp``. We download that sdist (through pip, so the user's
index settings apply), build only the ``llama-server`` target with
``-DGGML_NATIVE=OFF`` (a native build faults in the AMX path on some CPUs),
and keep the binary in a cache shared by every session on the machine.

A file lock makes concurrent sessions (xdist workers, two CI jobs) wait for
one build instead of racing. This module must not start servers.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from pytest_llmperf.errors import BuildError
from pytest_llmperf.records import Progress

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
BUILD_TAG = f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}-portable"
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
)


def cache_root() -> Path:
    """``$LLMPERF_CACHE_DIR``, else ``$XDG_CACHE_HOME/pytest-llmperf``."""
    explicit = os.environ.get("LLMPERF_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "pytest-llmperf"


def cached_binary() -> Path:
    return cache_root() / "llama.cpp" / BUILD_TAG / "bin" / "llama-server"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(argv: list[str], log: Path, progress: Progress, what: str) -> None:
    """Run a build step, relaying ninja's ``[n/m]`` lines as progress."""
    progress(f"llama-server build: {what}")
    with open(log, "ab") as sink:
        sink.write(f"$ {' '.join(argv)}\n".encode())
        sink.flush()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        last_report = 0.0
        for raw in proc.stdout:
            sink.write(raw)
            line = raw.decode("utf-8", "replace").strip()
            now = time.monotonic()
            # One line every ~15 s keeps a CI log readable during a 10-minute build.
            if line.startswith("[") and now - last_report > 15:
                progress(f"llama-server build: {line.split(' ', 1)[0]} {what}")
                last_report = now
        code = proc.wait()
    if code != 0:
        tail = "\n".join(log.read_text("utf-8", "replace").splitlines()[-30:])
        raise BuildError(f"llama-server build failed at '{what}' (exit {code}); log {log}:\n{tail}")


def _fetch_source(workdir: Path, log: Path, progress: Progress) -> Path:
    sdist_dir = workdir / "sdist"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}",
            "-d",
            str(sdist_dir),
        ],
        log,
        progress,
        f"download llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} source",
    )
    archives = sorted(sdist_dir.glob("llama_cpp_python-*.tar.gz"))
    if not archives:
        raise BuildError(f"pip downloaded no llama-cpp-python sdist into {sdist_dir}; log {log}")
    with tarfile.open(archives[0]) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(workdir, filter="data")
        else:  # Python < 3.10.12 has no extraction filters; the archive comes from our index
            tar.extractall(workdir)
    source = workdir / archives[0].name.removesuffix(".tar.gz") / "vendor" / "llama.cpp"
    if not (source / "CMakeLists.txt").is_file():
        raise BuildError(f"no llama.cpp source at {source}")
    return source


def build(progress: Progress, *, jobs: int | None = None) -> Path:
    """Return the cached ``llama-server``, building it first if needed."""
    target = cached_binary()
    if target.is_file():
        return target
    with _file_lock(target.parent.parent / ".lock"):
        if target.is_file():  # another session built it while we waited
            return target
        cmake = shutil.which("cmake")
        if cmake is None or shutil.which("c++") is None:
            raise BuildError(
                "building llama-server needs cmake and a C++ compiler "
                "(apt-get install cmake g++), or pass --llm-server-binary PATH to your own llama-server"
            )
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        started = time.monotonic()
        target.parent.parent.mkdir(parents=True, exist_ok=True)
        log = target.parent.parent / "build.log"
        progress(
            f"llama-server is not built yet: building it once into {target.parent} "
            "(about 6-10 min on 2 cores)"
        )
        with tempfile.TemporaryDirectory(prefix="llmperf-build-") as tmp:
            work = Path(tmp)
            source = _fetch_source(work, log, progress)
            build_dir = work / "build"
            _run(
                [cmake, "-S", str(source), "-B", str(build_dir), *generator, *CMAKE_FLAGS],
                log,
                progress,
                "configure",
            )
            n_jobs = str(jobs or os.cpu_count() or 2)
            _run(
                [cmake, "--build", str(build_dir), "--target", "llama-server", "-j", n_jobs],
                log,
                progress,
                "compile",
            )
            built = build_dir / "bin" / "llama-server"
            if not built.is_file():
                raise BuildError(f"the build finished but {built} is missing; log {log}")
            staging = target.with_suffix(".partial")
            staging.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(built, staging)
            staging.replace(target)  # atomic: a half-copied binary is never picked up
        progress(f"llama-server built in {time.monotonic() - started:.0f} s: {target}")
        return target

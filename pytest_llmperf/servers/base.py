"""The server boundary: what every backend gives the rest of the plugin.

A backend turns a model name into a running ``Server``: a base URL, the
request shape the engine honours (``Capabilities``) and a way to stop it.
``ManagedProcess`` owns the subprocess lifecycle shared by every backend we
start ourselves: its own process group, a log file, the cores it may run on
(``LaunchRequest.cpu_cores``, from ``servers.pinning``; children inherit
them), a health wait that fails fast when the process exits, and a stop that
signals the whole group.

This module must not know any particular engine, and must never stop a
process by name: only by the PID and process group it started.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psutil

from pytest_llmperf.errors import ConfigError, ServerDiedError, ServerStartError
from pytest_llmperf.records import Capabilities
from pytest_llmperf.servers.models import ModelSpec

LOG_TAIL_LINES = 40


@dataclass(frozen=True)
class LaunchRequest:
    """What the session asks a backend for: one model, sized for the session.

    ``max_concurrency`` and ``max_context`` come from the collected tests (the
    highest concurrency, the longest input + output) or from a run that needs
    more, so the server gets one slot per concurrent request. ``options``
    holds backend knobs by name (``tensor_parallel_size``, ``dtype``, ...).
    ``base_url`` never carries credentials; ``auth_headers`` holds what a
    server we attach to wants (``Authorization: Bearer <api_key>`` or HTTP
    basic auth from the URL's ``user:password@``). Neither they nor
    ``api_key`` are ever shown or logged.
    """

    model: ModelSpec
    max_concurrency: int
    max_context: int
    log_dir: Path
    start_timeout_s: float = 600.0
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    auth_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    executable: str | None = None
    extra_args: tuple[str, ...] = ()
    options: Mapping[str, str] = field(default_factory=dict)
    cpu_cores: tuple[int, ...] | None = None
    """Cores the server may run on (``None``: any); a CPU backend sizes its threads to them."""


class Backend(Protocol):
    """A way to start (or attach to) a server; third parties register one
    under the ``pytest_llmperf.backends`` entry-point group."""

    name: str

    def launch(self, request: LaunchRequest) -> Server: ...


class Server(Protocol):
    """A model server the tests can send requests to."""

    @property
    def backend(self) -> str: ...

    @property
    def engine(self) -> str:
        """The engine's label: ``llama.cpp``, ``vllm``, ``ollama``, ``openai-compatible``."""
        ...

    @property
    def engine_version(self) -> str | None:
        """The engine's version as it reports it, or ``None`` when it does not say."""
        ...

    @property
    def model(self) -> str:
        """The model name to put in requests."""
        ...

    @property
    def base_url(self) -> str: ...

    @property
    def capabilities(self) -> Capabilities: ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Headers every request carries (``Authorization``); never log them."""
        ...

    @property
    def pid(self) -> int | None:
        """The server's process id, or ``None`` when we did not start it."""
        ...

    def check_alive(self) -> None:
        """Raise ``ServerDiedError`` (with the log tail) if the server is gone."""
        ...

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str: ...

    def stop(self) -> None: ...


@dataclass(eq=False)
class StartedServer:
    """A server process that we started and will stop: what every such backend shares.

    Backends subclass it for their extra fields; ``label`` names the program in
    messages ("llama-server for gemma3-270m exited with code -9 ..."). ``slots``
    (requests it serves at once) and ``slot_context_tokens`` (tokens one request
    may hold, prompt and output together) are what it was started with, where
    the backend knows them; a run that needs more gets a restarted server.
    """

    model: str
    base_url: str
    process: ManagedProcess
    capabilities: Capabilities
    backend: str
    engine: str
    label: str
    engine_version: str | None = None
    model_id: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    slots: int | None = None
    slot_context_tokens: int | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def startup_s(self) -> float | None:
        """Seconds from the process launch to its first healthy answer: the model load, never a build."""
        return self.process.healthy_after_s

    def check_alive(self) -> None:
        self.process.check_alive(f"{self.label} for {self.model}")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return self.process.log_tail(lines)

    def stop(self) -> None:
        self.process.stop()


def server_env(strip: tuple[str, ...] = ("_API_KEY", "_TOKEN")) -> dict[str, str]:
    """Our environment for a server we start, minus secrets it has no use for.

    Variables whose names end with one of ``strip`` are left out; the key named by
    ``--llm-api-key-env`` must never reach a server's log or crash dump.
    """
    return {k: v for k, v in os.environ.items() if not k.endswith(strip)}


def int_option(options: Mapping[str, str], key: str, default: int = 1) -> int:
    """A whole-number backend knob from ``--llm-server-option KEY=VALUE`` (>= 1)."""
    raw = options.get(key)
    if raw is None:
        return default
    if not raw.strip().isdigit() or int(raw) < 1:
        raise ConfigError(f"server option {key}={raw!r}: expected a positive whole number")
    return int(raw)


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel just gave us on ``host``; the server binds it next."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """True when something listens on ``host:port``, so a server cannot bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Only a listener counts: connections lingering in TIME_WAIT do not stop a server.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
        return False


def _group_alive(pgid: int) -> bool:
    """True while a process other than a zombie is left in process group ``pgid``."""
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                return True
        except (OSError, psutil.Error):
            continue
    return False


def _die_with_parent(cpu_cores: Sequence[int] | None = None) -> None:
    """Child-side: new process group, SIGTERM if pytest itself is killed, and its cores."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    if cpu_cores:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, set(cpu_cores))  # threads and child processes inherit it


def http_status(url: str, timeout_s: float = 2.0, headers: Mapping[str, str] | None = None) -> int | None:
    """GET ``url`` and return the status code, or ``None`` if nothing answered."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError, TimeoutError):
        return None


class ManagedProcess:
    """A server subprocess in its own process group, with its log on disk."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stop_grace_s: float = 10.0,
        cpu_cores: Sequence[int] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.cpu_cores = tuple(cpu_cores) if cpu_cores else None
        self.log_path = log_path
        self.stop_grace_s = stop_grace_s
        self.healthy_after_s: float | None = None
        """Seconds from launch to the first healthy answer (``wait_healthy``): start-up only,
        never a build or a download that came before the launch."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.launched_at = time.monotonic()
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log.write(f"$ {' '.join(self.argv)}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            preexec_fn=functools.partial(_die_with_parent, self.cpu_cores),  # noqa: PLW1509 - setsid, pdeathsig, cores
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            data = self.log_path.read_bytes()[-64_000:]
        except OSError:
            return ""
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])

    def listens_on(self, port: int) -> bool:
        """True when this process, or one it started, listens on ``port``.

        Between ``free_port()`` and the server's bind another process may take
        the port (a second session's server); its health answer must not pass
        for ours.
        """
        try:
            root = psutil.Process(self.proc.pid)
            family = [root, *root.children(recursive=True)]
        except psutil.Error:
            return False
        for proc in family:
            try:
                conns = proc.net_connections(kind="tcp")
            except psutil.Error:
                continue
            if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns):
                return True
        return False

    def check_alive(self, what: str) -> None:
        code = self.proc.poll()
        if code is not None:
            raise ServerDiedError(
                f"{what} (pid {self.pid}) exited with code {code} (log {self.log_path}); "
                f"last lines of its log:\n{self.log_tail()}"
            )

    def wait_healthy(
        self,
        is_healthy: Callable[[], bool],
        *,
        what: str,
        timeout_s: float,
        poll_s: float = 0.25,
    ) -> float:
        """Poll ``is_healthy`` until true; return seconds waited.

        Fails at once if the process exits, and after ``timeout_s`` otherwise,
        both with the log tail in the message. Stops the process on failure.
        """
        started = time.monotonic()
        while True:
            if is_healthy():
                now = time.monotonic()
                self.healthy_after_s = now - self.launched_at
                return now - started
            code = self.proc.poll()
            if code is not None:
                self.stop()
                raise ServerStartError(
                    f"{what} exited with code {code} before it became healthy (log {self.log_path}); "
                    f"last lines of its log:\n{self.log_tail()}"
                )
            if time.monotonic() - started > timeout_s:
                self.stop()
                raise ServerStartError(
                    f"{what} did not become healthy within {timeout_s:g} s "
                    f"(raise --llm-start-timeout if it is just slow; log {self.log_path}); "
                    f"last lines of its log:\n{self.log_tail()}"
                )
            time.sleep(poll_s)

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after the grace period."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.stop_grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        # Children that outlived the leader (an engine's workers) share its group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        # SIGKILL lands asynchronously: return once the group is gone, so nothing outlives stop().
        deadline = time.monotonic() + 10.0
        while _group_alive(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._log.closed:
            self._log.close()

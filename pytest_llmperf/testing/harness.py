"""Start and stop the deterministic server from tests and benchmarks.

``running_detserver(...)`` is a context manager around ``ManagedProcess``: a
subprocess in its own process group on a free 127.0.0.1 port, ready once
``/health`` answers 200, stopped by its own PID. ``DetServer.stamps()``
reads the server's stamp log back, keyed by request id. This module must not
reach into the server process other than over HTTP and its log files.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_llmperf.measure.client import Target
from pytest_llmperf.records import Api, Capabilities
from pytest_llmperf.servers.base import ManagedProcess, free_port, http_status


@dataclass(frozen=True)
class DetServer:
    """A running detserver: where it listens and where it logs."""

    base_url: str
    model: str
    stamp_log: Path
    log_path: Path
    process: ManagedProcess = field(repr=False)

    def capabilities(self, api: Api = "completions", *, usage_per_chunk: bool = False) -> Capabilities:
        return Capabilities(
            api=api,
            exact_output=True,
            usage_in_stream=True,
            usage_per_chunk=usage_per_chunk and not api.startswith("ollama"),
            tokenize=None if api.startswith("ollama") else "vllm",
            metrics_path=None if api.startswith("ollama") else "/metrics",
        )

    def target(
        self,
        api: Api = "completions",
        *,
        usage_per_chunk: bool = False,
        tokenize: str | bool | None = True,
        headers: Mapping[str, str] | None = None,
    ) -> Target:
        """A ``Target`` for this server; ``tokenize=None`` forces usage calibration."""
        caps = self.capabilities(api, usage_per_chunk=usage_per_chunk)
        if tokenize is not True:
            caps = Capabilities(**{**caps.__dict__, "tokenize": tokenize or None})
        return Target(
            base_url=self.base_url, model=self.model, capabilities=caps, headers=dict(headers or {})
        )

    def stamps(self) -> dict[str, dict[str, Any]]:
        """The server's stamp log, one entry per request id (last one wins)."""
        out: dict[str, dict[str, Any]] = {}
        if self.stamp_log.exists():
            for line in self.stamp_log.read_text().splitlines():
                if line.strip():
                    entry = json.loads(line)
                    out[entry["id"]] = entry
        return out

    def alive(self) -> bool:
        return self.process.alive()


START_TIMEOUT_S = 30.0
"""How long the detserver may take to answer ``/health``: it starts in well under a second."""


@contextmanager
def running_detserver(
    workdir: Path,
    *,
    ttft_ms: float = 63.5,
    itl_ms: float = 10.0,
    fault: str | None = None,
    args: Sequence[str] = (),
    model: str = "detserver",
) -> Iterator[DetServer]:
    """Run a detserver for the ``with`` block; ``args`` adds raw command-line flags.

    Its stamp log and log go into ``workdir``, named after the port: give
    each server its own ``workdir`` to tell their files apart at a glance.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    stamp_log = workdir / f"detserver-{port}-stamps.jsonl"
    argv = [sys.executable, "-m", "pytest_llmperf.testing.detserver", "--port", str(port)]
    argv += [
        "--ttft-ms",
        str(ttft_ms),
        "--itl-ms",
        str(itl_ms),
        "--stamp-log",
        str(stamp_log),
        "--model",
        model,
    ]
    if fault:
        argv += ["--fault", fault]
    argv += list(args)
    log_path = workdir / f"detserver-{port}.log"
    proc = ManagedProcess(argv, log_path=log_path, stop_grace_s=5.0)
    base_url = f"http://127.0.0.1:{port}"
    try:
        proc.wait_healthy(
            lambda: http_status(base_url + "/health", timeout_s=1.0) == 200,
            what="detserver",
            timeout_s=START_TIMEOUT_S,
            poll_s=0.05,
        )
        yield DetServer(base_url=base_url, model=model, stamp_log=stamp_log, log_path=log_path, process=proc)
    finally:
        proc.stop()

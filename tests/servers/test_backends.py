"""Backends by name, vLLM's command line and environment, and the ``openai`` attach.

The ``openai`` backend is exercised against the project's deterministic
server (``pytest_llmperf.testing.detserver``), which speaks vLLM's
OpenAI-compatible API; vLLM itself runs for real in tests/integration.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_llmperf.errors import ConfigError, ServerStartError
from pytest_llmperf.measure.client import RequestSpec, Target, prepare, send
from pytest_llmperf.servers import backends as servers
from pytest_llmperf.servers import endpoint
from pytest_llmperf.servers import vllm as vllm_backend
from pytest_llmperf.servers.backends import get_backend
from pytest_llmperf.servers.base import LaunchRequest, free_port
from pytest_llmperf.servers.models import ModelSpec
from pytest_llmperf.testing.harness import DetServer

PY_CMD = ["/opt/py/bin/python", "-m", vllm_backend.API_SERVER_MODULE]
SPEC = ModelSpec(name="m", params_b=1, layers=2, kv_heads=2, head_dim=64, context=4096, vllm="org/m")


# -- backends by name ----------------------------------------------------------------------


def test_builtin_backends_get_the_progress_sink() -> None:
    lines: list[str] = []
    backend = get_backend("vllm", progress=lines.append)
    assert isinstance(backend, vllm_backend.VllmBackend)
    backend.progress("hello")
    assert lines == ["hello"]
    assert get_backend("openai").name == "openai"
    assert get_backend("ollama").name == "ollama"


def test_unknown_backend_lists_the_known_ones() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown backend 'sglang'; known backends: llamacpp, vllm, ollama, openai"
    ):
        get_backend("sglang")


class FakeEntryPoint:
    def __init__(self, name: str, target: object) -> None:
        self.name = name
        self.value = f"thirdparty:{name}"
        self.target = target

    def load(self) -> object:
        if isinstance(self.target, Exception):
            raise self.target
        return self.target


class SGLangBackend:
    name = "sglang"

    def launch(self, request: LaunchRequest) -> object:
        raise NotImplementedError


def test_third_party_backends_come_from_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    eps = [
        FakeEntryPoint("sglang", SGLangBackend),
        FakeEntryPoint("broken", ImportError("No module named 'thirdparty'")),
        FakeEntryPoint("notabackend", 42),
    ]
    monkeypatch.setattr(
        servers, "entry_points", lambda group: eps if group == servers.ENTRY_POINT_GROUP else []
    )
    assert isinstance(get_backend("sglang"), SGLangBackend)
    assert servers.backend_names() == (
        "llamacpp",
        "vllm",
        "ollama",
        "openai",
        "broken",
        "notabackend",
        "sglang",
    )
    with pytest.raises(
        ConfigError, match=r"backend 'broken' from entry point 'thirdparty:broken' could not be loaded"
    ):
        get_backend("broken")
    with pytest.raises(ConfigError, match=r"backend 'notabackend' \(42\) is not a backend"):
        get_backend("notabackend")


# -- vLLM: command line and environment ----------------------------------------------------


def request(tmp_path: Path, **options: str) -> LaunchRequest:
    return LaunchRequest(model=SPEC, max_concurrency=8, max_context=1024, log_dir=tmp_path, options=options)


def test_vllm_default_command_line(tmp_path: Path) -> None:
    p = vllm_backend.plan(request(tmp_path), PY_CMD, port=8123, on_gpu=True, cache_dir=tmp_path)
    assert p.argv == (
        *PY_CMD,
        "--model", "org/m", "--served-model-name", "m", "--host", "127.0.0.1", "--port", "8123",
        "--max-model-len", "1088", "--max-num-seqs", "8",
    )  # fmt: skip
    assert p.capabilities == vllm_backend.capabilities("completions")
    assert p.capabilities.extra_body == {"ignore_eos": True}
    assert p.capabilities.exact_output
    assert p.capabilities.usage_per_chunk
    assert p.capabilities.metrics_path == "/metrics"
    assert p.capabilities.tokenize == "vllm"


def test_vllm_knobs_become_flags(tmp_path: Path) -> None:
    req = request(
        tmp_path,
        tensor_parallel_size="4",
        pipeline_parallel_size="2",
        distributed_executor_backend="ray",
        gpu_memory_utilization="0.85",
        max_model_len="2048",
        max_num_seqs="16",
        dtype="float16",
        quantization="fp8",
        kv_cache_dtype="fp8",
        enforce_eager="true",
        api="chat",
    )
    req = LaunchRequest(**{**req.__dict__, "extra_args": ("--seed", "7")})
    p = vllm_backend.plan(req, ["/usr/bin/vllm", "serve"], port=9000, on_gpu=True, cache_dir=tmp_path)
    assert p.argv == (
        "/usr/bin/vllm", "serve", "org/m", "--served-model-name", "m",
        "--host", "127.0.0.1", "--port", "9000",
        "--max-model-len", "2048", "--max-num-seqs", "16",
        "--tensor-parallel-size", "4", "--pipeline-parallel-size", "2",
        "--distributed-executor-backend", "ray",
        "--gpu-memory-utilization", "0.85", "--dtype", "float16", "--quantization", "fp8",
        "--kv-cache-dtype", "fp8", "--enforce-eager", "--seed", "7",
    )  # fmt: skip
    assert p.capabilities.api == "chat"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tensor_paralel_size": "2"}, r"unknown vLLM server option\(s\) tensor_paralel_size; known: api, "),
        ({"max_num_seqs": "4"}, r"max_num_seqs=4 is below the session's highest concurrency 8"),
        ({"max_model_len": "8192"}, r"m supports a context of 4096 tokens; the longest case needs 8192"),
        ({"distributed_executor_backend": "slurm"}, r"use ray \(several nodes\) or mp \(one node\)"),
        ({"gpu_memory_utilization": "90"}, r"expected a fraction in \(0, 1\]"),
        ({"enforce_eager": "maybe"}, r"enforce_eager='maybe': expected true or false"),
        ({"tensor_parallel_size": "0"}, r"tensor_parallel_size='0': expected a positive whole number"),
        ({"api": "embeddings"}, r"vLLM serves 'completions' or 'chat'"),
    ],
)
def test_vllm_options_that_would_fail_or_distort_are_config_errors(
    tmp_path: Path, options: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        vllm_backend.plan(request(tmp_path, **options), PY_CMD, port=1, on_gpu=True, cache_dir=tmp_path)


def test_vllm_cpu_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-should-not-leak")
    monkeypatch.setenv("HF_TOKEN", "hf_needed_for_gated_repos")
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    p = vllm_backend.plan(
        request(tmp_path), PY_CMD, port=7, on_gpu=False, cache_dir=tmp_path / "c", model_id=str(model_dir)
    )
    env = p.env
    assert env["VLLM_HOST_IP"] == "127.0.0.1"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["VLLM_CACHE_ROOT"] == str(tmp_path / "c" / "vllm")
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "c" / "inductor")
    assert env["TMPDIR"] == str(tmp_path / "c" / "tmp")
    assert "OPENAI_API_KEY" not in env
    assert env["HF_TOKEN"] == "hf_needed_for_gated_repos"
    assert "env=" not in repr(p)
    assert "hf_needed" not in repr(p)
    bigger = vllm_backend.plan(
        request(tmp_path, cpu_kvcache_space="4"), PY_CMD, port=7, on_gpu=False, cache_dir=tmp_path
    )
    assert bigger.env["VLLM_CPU_KVCACHE_SPACE"] == "4"
    assert "HF_HUB_OFFLINE" not in bigger.env  # org/m is a hub id, not a local folder
    on_gpu = vllm_backend.plan(request(tmp_path), PY_CMD, port=7, on_gpu=True, cache_dir=tmp_path)
    assert "VLLM_CPU_KVCACHE_SPACE" not in on_gpu.env


def test_vllm_command_from_the_executable(tmp_path: Path) -> None:
    cli = tmp_path / "vllm"
    cli.write_text("#!/bin/sh\n")
    cli.chmod(0o755)
    assert vllm_backend.server_command(str(cli)) == [str(cli), "serve"]
    assert vllm_backend.server_command(sys.executable) == [
        sys.executable,
        "-m",
        vllm_backend.API_SERVER_MODULE,
    ]
    with pytest.raises(ConfigError, match="is not an executable file"):
        vllm_backend.server_command(str(tmp_path / "python-missing"))


def test_vllm_missing_everywhere_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setenv("LLMPERF_CACHE_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match=r"python -m pytest_llmperf.servers.vllm_env"):
        vllm_backend.server_command(None)


def test_vllm_refuses_a_base_url(tmp_path: Path) -> None:
    req = LaunchRequest(
        model=SPEC, max_concurrency=1, max_context=64, log_dir=tmp_path, base_url="http://x:1"
    )
    with pytest.raises(ConfigError, match="use --llm-backend=openai"):
        vllm_backend.VllmBackend().launch(req)


# -- openai: attach to a running endpoint --------------------------------------------------


def attach(det: DetServer, tmp_path: Path, spec: ModelSpec, **kw: Any) -> endpoint.EndpointServer:
    base_url = det.base_url + "/v1/"
    req = LaunchRequest(
        model=spec, max_concurrency=1, max_context=64, log_dir=tmp_path, base_url=base_url, **kw
    )
    return endpoint.OpenAIEndpointBackend().launch(req)


def test_endpoint_attaches_finds_the_served_model_and_streams(det: DetServer, tmp_path: Path) -> None:
    server = attach(det, tmp_path, ModelSpec(name="detserver"))
    assert server.base_url == det.base_url  # "/v1/" is the client's to add
    assert server.model == "detserver"
    assert server.pid is None
    assert not server.capabilities.exact_output
    assert server.capabilities.extra_body == {}
    server.check_alive()
    target = Target(server.base_url, server.model, server.capabilities, server.headers)
    prepared = prepare(
        target, "one two three", RequestSpec(request_id="r1", scenario="s", input_tokens=3, max_tokens=5)
    )
    record = asyncio.run(send(prepared, scheduled_ns=time.perf_counter_ns(), timeout_s=30))
    assert record.error is None
    assert record.output_tokens == 5
    server.stop()
    assert det.alive()  # not ours to stop


def test_endpoint_matches_the_hf_id_or_takes_an_explicit_name(det: DetServer, tmp_path: Path) -> None:
    by_id = attach(det, tmp_path, ModelSpec(name="my-alias", vllm="detserver"))
    assert by_id.model == "detserver"
    with pytest.raises(
        ConfigError,
        match=r"the endpoint at http://127.0.0.1:\d+ serves detserver, not 'llama3.1-8b': select it with "
        r"--llm-model detserver \(or keep the name and add --llm-server-option model=detserver\)",
    ):
        attach(det, tmp_path, ModelSpec(name="llama3.1-8b", vllm="meta-llama/Llama-3.1-8B-Instruct"))
    explicit = attach(
        det, tmp_path, ModelSpec(name="x"), options={"model": "served-as", "ignore_eos": "true"}
    )
    assert explicit.model == "served-as"
    assert explicit.capabilities.exact_output
    assert explicit.capabilities.extra_body == {"ignore_eos": True}


def test_endpoint_key_goes_in_headers_and_nowhere_else(det: DetServer, tmp_path: Path) -> None:
    server = attach(det, tmp_path, ModelSpec(name="detserver"), api_key="sk-secret-123")
    assert server.headers == {"Authorization": "Bearer sk-secret-123"}
    assert "sk-secret" not in repr(server)
    req = LaunchRequest(
        model=SPEC, max_concurrency=1, max_context=1, log_dir=tmp_path, api_key="sk-secret-123"
    )
    assert "sk-secret" not in repr(req)


def test_endpoint_needs_a_url_and_an_answer(tmp_path: Path) -> None:
    backend = endpoint.OpenAIEndpointBackend()
    with pytest.raises(ConfigError, match="add --llm-base-url=URL"):
        backend.launch(LaunchRequest(model=SPEC, max_concurrency=1, max_context=1, log_dir=tmp_path))
    silent = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerStartError, match="does not answer GET /v1/models or /health"):
        backend.launch(
            LaunchRequest(model=SPEC, max_concurrency=1, max_context=1, log_dir=tmp_path, base_url=silent)
        )


def test_endpoint_options_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"unknown openai endpoint option\(s\) tensor_parallel_size"):
        endpoint.capabilities({"tensor_parallel_size": "2"})
    assert (
        endpoint.capabilities({"usage_in_stream": "false", "metrics_path": "/metrics"}).usage_in_stream
        is False
    )
    with pytest.raises(ConfigError, match="expected a path like /metrics"):
        endpoint.capabilities({"metrics_path": "metrics"})

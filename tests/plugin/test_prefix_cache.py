"""Prefix caching measured on purpose, on the real llama-server (the embedded default).

A shared-prefix workload (every prompt opens with the same 448 of its 512
tokens, and asks the server to cache prompts) must show a lower TTFT than
fresh prompts of the same length: llama-server reuses the cached prefix and
prefills only the rest. Fresh prompts, the default, must not: they share
nothing beyond BOS, so even with the cache switched on (``prefix_cache=True``)
there is nothing to reuse and their TTFT stays that of a full prefill. So the
default measures uncached prefill whatever the server's cache setting.

Gemma 3 attends over a sliding window in most layers, and llama-server keeps
only that window's cache unless started with ``--swa-full``; without it no
prefix is ever reused (every request prefills all 512 tokens, as measured
here). The session passes ``--llm-server-arg=--swa-full``, as the README
tells users of sliding-window models to.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_support import bench_entries, request_lines

CASES = """
def test_fresh(llm_perf):
    llm_perf.run(input_tokens=512, output_tokens=4, requests=8, warmup=1)

def test_fresh_cache_on(llm_perf):
    llm_perf.run(input_tokens=512, output_tokens=4, requests=8, warmup=1, prefix_cache=True)

def test_shared_prefix(llm_perf):
    llm_perf.run(input_tokens=512, output_tokens=4, requests=8, warmup=1, shared_prefix=448)
"""


def test_a_shared_prefix_is_served_from_cache_and_fresh_prompts_are_not(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makepyfile(test_prefix=CASES)
    out, requests = tmp_path / "run.json", tmp_path / "requests"
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", "--llm-server-arg=--swa-full", f"--benchmark-json={out}",
        f"--llm-save-requests={requests}", timeout=900,
    )  # fmt: skip
    result.assert_outcomes(passed=3)
    entries = bench_entries(out)
    fresh = entries["test_fresh[gemma3-270m]"]
    cache_on = entries["test_fresh_cache_on[gemma3-270m]"]
    shared = entries["test_shared_prefix[gemma3-270m]"]
    for llm in (fresh, cache_on, shared):
        assert llm["input_tokens_mean"] == 512  # every prompt exactly 512 tokens, as the server counts
        assert llm["error_rate"] == 0
    assert "traffic" not in fresh  # the default: fresh prompts, the backend's cache_prompt: false
    assert cache_on["traffic"]["prefix_cache"] == "on"
    assert (shared["traffic"]["shared_prefix_tokens"], shared["traffic"]["prefix_cache"]) == (448, "on")

    ttft = {name: llm["ttft_ms"]["p50"] for name, llm in entries.items()}
    # Prefilling 64 tokens instead of 512: far below half, even on a shared machine.
    assert shared["ttft_ms"]["p50"] < 0.5 * fresh["ttft_ms"]["p50"], ttft
    # Nothing to reuse: the cache does not make fresh prompts faster.
    assert cache_on["ttft_ms"]["p50"] > 0.75 * fresh["ttft_ms"]["p50"], ttft
    assert len(request_lines(requests)) == 3 * 9

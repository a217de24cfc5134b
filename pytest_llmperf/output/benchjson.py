"""pytest-benchmark integration: one benchmark entry per ``llm_perf`` test.

The entry's ``stats`` come from the per-request end-to-end latencies (in
seconds, pytest-benchmark's unit), so ``--benchmark-json``, ``--benchmark-autosave``,
``--benchmark-compare`` and ``pytest-benchmark compare`` all work on it. The
LLM figures go into ``extra_info["llm"]``, whose layout ``schema`` owns.

This module relies on ``BenchmarkFixture._make_stats``, pytest-benchmark's
own way to start a stats series (pinned to pytest-benchmark 5.x). It writes
finished values only: it must not measure or judge.
"""

from __future__ import annotations

from typing import Any

from pytest_llmperf.schema import LlmInfo


def record(benchmark: Any, info: LlmInfo, e2e_s: list[float]) -> bool:
    """Fill the test's benchmark fixture; False when no request succeeded (no E2E to time)."""
    benchmark.extra_info["llm"] = info
    # Marks the fixture used, as benchmark(...) would: no "fixture was not used" warning.
    benchmark._mode = "llm_perf.run(...)"
    if not e2e_s:
        return False
    stats = benchmark._make_stats(1)
    for value in e2e_s:
        stats.update(value)
    return True

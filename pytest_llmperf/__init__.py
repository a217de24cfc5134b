"""pytest-llmperf: LLM serving performance tests that gate a deployment.

The public surface is the ``llm_perf`` fixture, the ``llm_budget`` marker and
the values in :mod:`pytest_llmperf.records`.
"""

from __future__ import annotations

from pytest_llmperf.records import Distribution, RequestRecord, RunResult, Scenario, Summary

__all__ = ["Distribution", "RequestRecord", "RunResult", "Scenario", "Summary"]
__version__ = "0.1.0"

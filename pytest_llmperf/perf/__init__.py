"""What a test measures with: the ``llm_perf`` fixture object and its one measuring object.

``fixture.LlmPerf`` keeps the public ``run``/``sweep``/``capacity`` keyword
arguments and turns them into typed ``Load`` and ``TrafficArgs`` values once;
``measurer.Measurer`` measures points; ``sweep`` and ``capacity`` are ways of
choosing them. Nothing here imports pytest.
"""

from __future__ import annotations

from pytest_llmperf.perf.capacity import CapacityResult
from pytest_llmperf.perf.fixture import LlmPerf
from pytest_llmperf.perf.measurer import Measurer, Wiring, nothing_completed
from pytest_llmperf.perf.sweep import Sweep

__all__ = ["CapacityResult", "LlmPerf", "Measurer", "Sweep", "Wiring", "nothing_completed"]

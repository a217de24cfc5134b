"""``llm_perf.run``'s load arguments checked as a flat keyword list, for the tests of their messages."""

from __future__ import annotations

from typing import Any

from pytest_llmperf.measure.load import Load, LoadDefaults, Shape, scenario_of
from pytest_llmperf.measure.traffic import Traffic, TrafficArgs, check_traffic
from pytest_llmperf.records import Scenario


def check_load(**args: object) -> Scenario:
    """``scenario_of`` with the arguments spelled as ``llm_perf.run``'s keywords (and the defaults')."""
    a: dict[str, Any] = {"duration_s": None, "turns": 1, "where": "llm_perf.run", **args}
    load = Load(a["concurrency"], a["rate"], a["requests"], a["warmup"], a["arrival"], a["seed"],
                a["timeout_s"], a["adaptive"], a["target_rel_ci"], a["duration_s"])  # fmt: skip
    defaults = LoadDefaults(
        a["default_timeout_s"], a["default_adaptive"], a.get("default_target_rel_ci", 0.05)
    )
    return scenario_of(load, Shape(a["input_tokens"], a["output_tokens"], a["turns"]), defaults, a["where"])


def traffic_of(*, where: str, seed: int = 0, **args: Any) -> Traffic:
    """``check_traffic`` with the traffic arguments spelled as ``llm_perf.run``'s keywords."""
    return check_traffic(where, TrafficArgs(**args), seed)

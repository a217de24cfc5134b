"""Whether pytest-benchmark's own table was asked for, across the pytest-benchmark versions we support."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_llmperf.output.benchjson import table_asked

COLUMNS = ["min", "max", "mean", "stddev", "median", "iqr", "outliers", "ops", "rounds", "iterations"]
DEFAULTS_5_3: dict[str, Any] = {
    "benchmark_columns": None, "benchmark_sort": "min", "benchmark_group_by": "group",
    "benchmark_name": "normal", "benchmark_time_unit": None, "benchmark_histogram": None,
    "benchmark_verbose": False, "benchmark_compare_fail": None, "benchmark_cprofile": None,
}  # fmt: skip
# pytest-benchmark 5.2.3 (seen on the GPU machine) fills the columns option with its whole list.
DEFAULTS_5_2 = {**DEFAULTS_5_3, "benchmark_columns": COLUMNS, "benchmark_histogram": []}


def getoption(values: dict[str, Any]) -> Any:
    return lambda name, default=None: values.get(name, default)


@pytest.mark.parametrize("defaults", [DEFAULTS_5_3, DEFAULTS_5_2], ids=["5.3", "5.2"])
def test_the_defaults_of_either_version_ask_for_no_table(defaults: dict[str, Any]) -> None:
    assert table_asked(getoption(defaults)) is False


@pytest.mark.parametrize(
    ("name", "value"),
    [("benchmark_columns", ["min", "max"]), ("benchmark_sort", "mean"), ("benchmark_verbose", True),
     ("benchmark_histogram", ["hist"]), ("benchmark_cprofile", "tottime")],
)  # fmt: skip
@pytest.mark.parametrize("defaults", [DEFAULTS_5_3, DEFAULTS_5_2], ids=["5.3", "5.2"])
def test_a_display_option_given_asks_for_the_table(defaults: dict[str, Any], name: str, value: Any) -> None:
    assert table_asked(getoption({**defaults, name: value})) is True

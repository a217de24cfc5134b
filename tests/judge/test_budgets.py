"""Budget expressions: keys, presets, parsing from each source, precedence, checks."""

from __future__ import annotations

import pytest

from pytest_llmperf.errors import ConfigError
from pytest_llmperf.judge.budgets import (
    DEFAULT_SOURCE,
    DEFAULTS,
    KEYS,
    PRESETS,
    Budget,
    Budgets,
    merge_budgets,
    parse_cli,
    parse_marker,
    parse_table,
    parse_tables,
)
from pytest_llmperf.records import Distribution, Summary


def dist(p50: float, p95: float, p99: float | None = None) -> Distribution:
    p99 = p95 if p99 is None else p99
    return Distribution(
        count=10, mean=p50, stddev=1.0, min=p50 / 2, max=p99, p50=p50, p90=p95, p95=p95, p99=p99
    )


def summary(**changes: object) -> Summary:
    values: dict[str, object] = {
        "requests": 16,
        "completed": 16,
        "errors": 0,
        "duration_s": 4.0,
        "ttft_ms": dist(100.0, 600.0),
        "itl_ms": dist(10.0, 12.0),
        "tpot_ms": dist(10.0, 11.0),
        "e2e_ms": dist(730.0, 1300.0),
        "queue_ms": None,
        "request_per_s": 4.0,
        "output_tok_per_s": 150.0,
        "total_tok_per_s": 662.0,
        "error_rate": 0.0,
        "input_tokens_mean": 128.0,
        "output_tokens_mean": 64.0,
        "output_length_misses": 0,
    }
    values.update(changes)
    return Summary(**values)  # type: ignore[arg-type]


def limits(budgets: Budgets) -> dict[str, tuple[float, str]]:
    return {b.key: (b.limit, b.source) for b in budgets}


def test_key_set_is_latency_stats_rate_floors_and_error_rate() -> None:
    # latency stats, rate floors, error rate, per-request SLOs, goodput floors, capacity floors
    assert len(KEYS) == 4 * 6 + 3 + 1 + 3 + 3 + 2
    assert KEYS["slo_tpot_ms"] == ("slo_tpot_ms", None, "per_request")
    assert KEYS["slo_attainment_min"] == ("slo_attainment", None, "min")
    assert KEYS["goodput_tok_per_s_min"] == ("goodput_tok_per_s", None, "min")
    assert KEYS["capacity_concurrency_min"] == ("capacity_concurrency", None, "min")
    assert KEYS["ttft_ms_p95"] == ("ttft_ms", "p95", "max")
    assert KEYS["e2e_ms_mean"] == ("e2e_ms", "mean", "max")
    assert KEYS["output_tok_per_s_min"] == ("output_tok_per_s", None, "min")
    assert KEYS["error_rate_max"] == ("error_rate", None, "max")
    assert "ttft_ms_min" not in KEYS  # a latency floor is meaningless


def test_mlperf_presets_hold_the_server_scenario_limits() -> None:
    assert PRESETS == {
        "mlperf-llama3.1-8b": {"ttft_ms_p99": 2000.0, "tpot_ms_p99": 100.0},
        "mlperf-llama3.1-8b-interactive": {"ttft_ms_p99": 500.0, "tpot_ms_p99": 30.0},
        "mlperf-llama2-70b": {"ttft_ms_p99": 2000.0, "tpot_ms_p99": 200.0},
        "mlperf-llama2-70b-interactive": {"ttft_ms_p99": 450.0, "tpot_ms_p99": 40.0},
    }


def test_marker_keywords_become_sorted_budgets_with_their_source() -> None:
    budgets = parse_marker((), {"ttft_ms_p95": 500, "tpot_ms_p50": 40.5, "output_tok_per_s_min": "200"})
    assert [b.key for b in budgets] == ["output_tok_per_s_min", "tpot_ms_p50", "ttft_ms_p95"]
    assert limits(budgets) == {
        "output_tok_per_s_min": (200.0, "marker"),
        "tpot_ms_p50": (40.5, "marker"),
        "ttft_ms_p95": (500.0, "marker"),
    }
    ttft = budgets.get("ttft_ms_p95")
    assert ttft is not None
    assert (ttft.metric, ttft.stat, ttft.direction, ttft.label) == ("ttft_ms", "p95", "max", "ttft_ms p95")


def test_marker_preset_positional_with_explicit_keys_over_it() -> None:
    budgets = parse_marker(("mlperf-llama3.1-8b",), {"ttft_ms_p99": 1500, "error_rate_max": 0})
    assert limits(budgets) == {
        "error_rate_max": (0.0, "marker"),
        "tpot_ms_p99": (100.0, "marker, preset mlperf-llama3.1-8b"),
        "ttft_ms_p99": (1500.0, "marker"),
    }


def test_marker_preset_keyword_and_later_preset_wins() -> None:
    budgets = parse_marker(("mlperf-llama2-70b",), {"preset": "mlperf-llama2-70b-interactive"})
    assert budgets.as_dict() == {"ttft_ms_p99": 450.0, "tpot_ms_p99": 40.0}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ttft_p95": 500}, "unknown budget key 'ttft_p95' in marker: did you mean 'ttft_ms_p95'?"),
        ({"error_rate": 0}, "did you mean 'error_rate_max'?"),
        (
            {"ttft_ms_p95": "fast"},
            "budget ttft_ms_p95 in marker must be a number, got 'fast'; type e.g. ttft_ms_p95=500",
        ),
        ({"ttft_ms_p95": True}, "must be a number, got True"),
        ({"ttft_ms_p95": [500]}, "must be a number, got [500]"),
        ({"ttft_ms_p95": -1}, "must be a finite number >= 0, got -1"),
        ({"ttft_ms_p95": float("nan")}, "must be a finite number >= 0"),
        (
            {"error_rate_max": 5},
            "error_rate_max in marker is a fraction between 0 and 1, got 5; type error_rate_max=0.01",
        ),
        (
            {"preset": "mlperf-llama3-8b"},
            "unknown budget preset 'mlperf-llama3-8b' in marker: did you mean 'mlperf-llama3.1-8b'?",
        ),
        ({"preset": 7}, "preset in marker must be a name or a list of names, got 7"),
    ],
)
def test_marker_mistakes_say_what_to_type(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_marker((), kwargs)
    assert message in str(info.value)


def test_unknown_key_lists_the_valid_keys() -> None:
    with pytest.raises(
        ConfigError, match=r"valid keys are \{ttft_ms,itl_ms,tpot_ms,e2e_ms\}_\{p50,p90,p95,p99,mean,max\}"
    ):
        parse_marker((), {"throughput_min": 1})


def test_marker_positional_must_be_a_preset_name() -> None:
    with pytest.raises(
        ConfigError, match="positional arguments of llm_budget in marker are preset names, got 500"
    ):
        parse_marker((500,), {})


def test_cli_values_pairs_commas_and_bare_presets() -> None:
    budgets = parse_cli(["ttft_ms_p95=500, tpot_ms_p50=40", "mlperf-llama2-70b", "preset=mlperf-llama3.1-8b"])
    assert limits(budgets) == {
        "ttft_ms_p95": (500.0, "--llm-budget"),
        "tpot_ms_p50": (40.0, "--llm-budget"),
        "ttft_ms_p99": (2000.0, "--llm-budget, preset mlperf-llama3.1-8b"),
        "tpot_ms_p99": (100.0, "--llm-budget, preset mlperf-llama3.1-8b"),
    }


def test_cli_values_already_split_into_a_mapping() -> None:
    assert parse_cli({"ttft_ms_p95": "500", "preset": "mlperf-llama2-70b"}).as_dict() == {
        "ttft_ms_p95": 500.0,
        "ttft_ms_p99": 2000.0,
        "tpot_ms_p99": 200.0,
    }


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ttft_ms_p95", "--llm-budget 'ttft_ms_p95' has no value; type e.g. --llm-budget ttft_ms_p95=500"),
        ("mlperf-llama3-8b", "is neither KEY=VALUE nor a preset name (did you mean 'mlperf-llama3.1-8b'?)"),
        ("ttft_ms_p95=5oo", "budget ttft_ms_p95 in --llm-budget must be a number, got '5oo'"),
        ("ttfx_ms_p95=500", "unknown budget key 'ttfx_ms_p95' in --llm-budget: did you mean 'ttft_ms_p95'?"),
    ],
)
def test_cli_mistakes(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_cli([value])
    assert message in str(info.value)


def test_pyproject_tables_per_model() -> None:
    parsed = parse_tables({"gemma3-270m": {"ttft_ms_p95": 800, "preset": "mlperf-llama3.1-8b"}, "big": {}})
    assert limits(parsed["gemma3-270m"]) == {
        "ttft_ms_p95": (800.0, '[tool.llmperf.budgets."gemma3-270m"]'),
        "ttft_ms_p99": (2000.0, '[tool.llmperf.budgets."gemma3-270m"], preset mlperf-llama3.1-8b'),
        "tpot_ms_p99": (100.0, '[tool.llmperf.budgets."gemma3-270m"], preset mlperf-llama3.1-8b'),
    }
    assert len(parsed["big"]) == 0


def test_pyproject_table_that_is_not_a_table() -> None:
    with pytest.raises(
        ConfigError, match=r'\[tool.llmperf.budgets."m"\] must be a table of KEY = VALUE lines'
    ):
        parse_tables({"m": 500})
    with pytest.raises(ConfigError, match=r'unknown budget key \'ttft\' in \[tool.llmperf.budgets."m"\]'):
        parse_tables({"m": {"ttft": 500}})


def test_precedence_cli_over_marker_over_config_per_key() -> None:
    config = parse_table({"ttft_ms_p95": 800, "tpot_ms_p50": 50, "error_rate_max": 0.1}, "pyproject")
    marker = parse_marker((), {"ttft_ms_p95": 600, "tpot_ms_p50": 45})
    cli = parse_cli(["ttft_ms_p95=500"])
    merged = merge_budgets(config, marker, cli)
    assert limits(merged) == {
        "error_rate_max": (0.1, "pyproject"),
        "tpot_ms_p50": (45.0, "marker"),
        "ttft_ms_p95": (500.0, "--llm-budget"),
    }
    # The default layer sits under all of them: errors fail a test unless a budget allows them.
    assert limits(merge_budgets(DEFAULTS)) == {"error_rate_max": (0.0, DEFAULT_SOURCE)}
    assert merge_budgets(DEFAULTS, config, marker, cli) == merged
    assert limits(merge_budgets(DEFAULTS, None, marker)) == {
        "error_rate_max": (0.0, DEFAULT_SOURCE),
        "tpot_ms_p50": (45.0, "marker"),
        "ttft_ms_p95": (600.0, "marker"),
    }
    assert (
        "error_rate_max"
        not in merge_budgets(DEFAULTS, None, None, parse_cli(["error_rate_max=off"])).as_dict()
    )


def test_a_higher_layer_can_switch_a_budget_off() -> None:
    config = parse_table({"ttft_ms_p95": 800, "tpot_ms_p50": 50}, "pyproject")
    marker = parse_marker((), {"tpot_ms_p50": None})
    assert merge_budgets(config, marker).as_dict() == {"ttft_ms_p95": 800.0}
    assert merge_budgets(config, None, parse_cli(["ttft_ms_p95=off"])).as_dict() == {"tpot_ms_p50": 50.0}
    # A later explicit value in the same layer revives a key cleared before it.
    assert parse_cli(["tpot_ms_p50=off", "tpot_ms_p50=30"]).cleared == frozenset()


def test_violation_lines_name_metric_value_limit_and_source() -> None:
    budgets = parse_marker(
        (), {"ttft_ms_p95": 500, "tpot_ms_p50": 40, "output_tok_per_s_min": 200, "error_rate_max": 0}
    )
    failing = summary(completed=15, errors=1, error_rate=0.0625, first_error="HTTP 503: overloaded")
    assert budgets.violations(failing) == (
        "1 of 16 requests failed (error_rate 0.0625 > error_rate_max 0, marker); first: HTTP 503: overloaded",
        "output_tok_per_s = 150 tok/s below budget 200 tok/s (marker)",
        "ttft_ms p95 = 600 ms exceeds budget 500 ms (marker)",
    )


def test_met_budgets_and_exact_limits_pass() -> None:
    budgets = parse_marker((), {"ttft_ms_p95": 600, "tpot_ms_p50": 10, "output_tok_per_s_min": 150})
    assert budgets.violations(summary()) == ()


def test_unmeasured_figure_misses_its_budget() -> None:
    budget = Budget("tpot_ms_p99", 100.0, "marker")
    assert budget.observed(summary(tpot_ms=None)) is None
    assert budget.violation(summary(tpot_ms=None)) == (
        "tpot_ms p99 not measured (no request defined it); budget 100 ms (marker)"
    )
    floor = Budget("request_per_s_min", 2.5, "cli")
    assert floor.violation(summary(request_per_s=None)) == (
        "request_per_s not measured (no request defined it); budget 2.5 req/s (cli)"
    )

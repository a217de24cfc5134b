"""pytest-benchmark integration: one benchmark entry per ``llm_perf`` test.

The entry's ``stats`` come from the per-request end-to-end latencies (in
seconds, pytest-benchmark's unit), so ``--benchmark-json``, ``--benchmark-autosave``,
``--benchmark-compare`` and ``pytest-benchmark compare`` all work on it. The
LLM figures go into ``extra_info["llm"]``, whose layout ``schema`` owns; the
dict stays the same object until the session ends, so its ``outcome`` can be
set once pytest's reports are known.

A test whose every request failed has no E2E to time, and pytest-benchmark's
stats cannot be empty (nor can ``pytest-benchmark compare`` read an entry
without them). Such a test's entry goes under the top-level key
``llmperf_unmeasured`` instead, with the same layout minus ``stats``: its
fixture is marked with pytest-benchmark's own ``has_error``, which keeps it out
of ``benchmarks`` and out of its table while still letting the run be saved.

This module relies on pytest-benchmark 5.x internals (``_make_stats``,
``_mode``, ``has_error``, ``BenchmarkSession``'s attributes), pinned in the
project's dependencies: pytest-benchmark has no public way to record timings
measured elsewhere. Its fixture's public calls (``benchmark(fn)``,
``benchmark.pedantic(fn)``) run and time a function themselves, and
``_make_stats`` is where it builds an entry's stats from timings. It writes
finished values only: it must not measure or judge.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pytest_llmperf.schema import LlmInfo

UNMEASURED_KEY = "llmperf_unmeasured"

# pytest-benchmark's display options and their defaults: one given means its table was asked for.
# Each option lists every default the supported pytest-benchmark versions use: 5.2 fills
# --benchmark-columns with its full column list where 5.3 leaves it None.
_ALL_COLUMNS = ["min", "max", "mean", "stddev", "median", "iqr", "outliers", "ops", "rounds", "iterations"]
_DISPLAY_DEFAULTS: dict[str, tuple[object, ...]] = {
    "benchmark_columns": (None, _ALL_COLUMNS),
    "benchmark_sort": ("min",),
    "benchmark_group_by": ("group",),
    "benchmark_name": ("normal",),
    "benchmark_time_unit": (None,),
    "benchmark_histogram": (None, []),
    "benchmark_verbose": (False,),
    "benchmark_compare_fail": (None, []),
    "benchmark_cprofile": (None,),
}


def record(benchmark: Any, info: LlmInfo, e2e_s: list[float]) -> bool:
    """Fill the test's benchmark fixture; False when no request succeeded (no E2E to time)."""
    benchmark.extra_info["llm"] = info
    # Marks the fixture used, as benchmark(...) would: no "fixture was not used" warning.
    benchmark._mode = "llm_perf.run(...)"
    stats = benchmark._make_stats(1)  # in the session's list: the run is saved even if this is all
    if not e2e_s:
        benchmark.has_error = True  # no stats to show or store: see UNMEASURED_KEY
        return False
    for value in e2e_s:
        stats.update(value)
    return True


def release(benchmark: Any) -> None:
    """A test that measured nothing (it failed or was stopped first) leaves no entry and no
    warning: pytest-benchmark would warn that a fixture the plugin asked for went unused."""
    if not benchmark._mode:
        benchmark._mode = "llm_perf (nothing measured)"


def unmeasured_entries(benchmarks: Iterable[Any]) -> list[dict[str, Any]]:
    """The entries of tests that sent requests but completed none (see the module docstring)."""
    return [
        bench.as_dict(include_data=False, stats=False)
        for bench in benchmarks
        if bench.has_error and not bench and "llm" in bench.extra_info
    ]


def table_asked(getoption: Any) -> bool:
    """Whether a ``--benchmark-*`` display option was given, asking for pytest-benchmark's table."""
    return any(getoption(name, defaults[0]) not in defaults for name, defaults in _DISPLAY_DEFAULTS.items())


def nothing_to_save(session: Any) -> str | None:
    """What pytest-benchmark would have saved but has nothing for; ``None`` when all is well.

    When no test measured anything it warns "Not saving anything", which
    ``filterwarnings = error`` turns into a traceback at exit; disabling the
    session's saving (what ``--benchmark-disable`` does) keeps it quiet, and
    the caller says so in one line instead.
    """
    if session.benchmarks or session.disabled:
        return None
    outputs = (
        ("--benchmark-json", session.json),
        ("--benchmark-autosave", session.autosave),
        ("--benchmark-save", session.save),
    )
    wanted = [flag for flag, on in outputs if on]
    if not wanted:
        return None
    session.disabled = True
    return f"no test measured anything, so {' and '.join(wanted)} wrote no file"

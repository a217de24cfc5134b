"""A busy machine: the figures that make a case invalid, the line that says so, and no comparison."""

from __future__ import annotations

from typing import Any

import pytest
from judge_support import TTFTS, baseline_of, run

from pytest_llmperf.judge.busy import OTHERS_BUSY_CORES, SPARE_CORES, busy_reasons, is_busy
from pytest_llmperf.judge.verdict import Rules, judge

QUIET = {"cores": 2, "samples": 50, "busy_cores_mean": 1.97, "steal_cores_mean": 0.0,
         "idle_cores_mean": 0.03, "client_cores_mean": 0.05, "server_cores_mean": 1.9,
         "others_cores_mean": 0.02, "others_cores_max": 0.2, "server_threads": 2}  # fmt: skip
HOG = {**QUIET, "server_cores_mean": 1.0, "others_cores_mean": 0.9, "idle_cores_mean": 0.02}


def test_a_quiet_machine_is_not_busy() -> None:
    assert busy_reasons({"load": QUIET}) == ()
    assert busy_reasons({}) == ()
    assert busy_reasons(None) == ()


def test_a_hog_beside_the_server_names_the_figures() -> None:
    assert busy_reasons({"load": HOG}) == (
        "invalid measurement: machine busy: other processes used 0.9 cores while 0.02 of 2 cores were idle; "
        "the server got 1 of its 2 cores; rerun on a quiet machine",
    )


def test_others_on_a_machine_with_spare_cores_do_not_count() -> None:
    big = {**HOG, "cores": 64, "idle_cores_mean": 61.0}
    assert busy_reasons({"load": big}) == ()
    assert busy_reasons({"load": {**HOG, "idle_cores_mean": SPARE_CORES}}) == ()
    assert busy_reasons({"load": {**HOG, "others_cores_mean": OTHERS_BUSY_CORES - 0.01}}) == ()


def test_an_attached_endpoint_has_no_others_figure_so_only_steal_and_throttling_count() -> None:
    attached = {k: v for k, v in HOG.items() if k not in ("others_cores_mean", "server_cores_mean")}
    assert busy_reasons({"load": attached}) == ()
    stolen = {**attached, "steal_cores_mean": 0.4, "freq_ratio_mean": 0.5, "throttle_events": 3}
    assert busy_reasons({"load": stolen}) == (
        "invalid measurement: machine busy: the hypervisor ran other VMs for 0.4 cores (CPU steal time); "
        "rerun on a quiet machine",
        "invalid measurement: CPU throttled: the clock ran at 50% of its maximum; rerun on a quiet machine",
        "invalid measurement: CPU throttled: 3 thermal throttle events during the case; "
        "rerun on a quiet machine",
    )


def test_a_busy_run_is_invalid_and_never_compared() -> None:
    base = baseline_of(run(TTFTS, 10.0))
    busy = run(TTFTS, 40.0, telemetry={"load": HOG})  # four times slower: what a hog does
    outcome = judge(busy, None, base)
    assert outcome.kind == "invalid"
    assert outcome.reasons[0].startswith("invalid measurement: machine busy: other processes used 0.9 cores")
    assert outcome.comparisons == ()
    warned = judge(busy, None, base, rules=Rules(busy="warn"))
    assert warned.kind == "fail-regression"
    assert warned.notes[0].startswith("invalid measurement: machine busy")
    assert not any("busy" in note for note in judge(busy, None, base, rules=Rules(busy="ignore")).notes)


@pytest.mark.parametrize("mode", ["fail", "warn"])
def test_a_busy_baseline_entry_is_not_compared(mode: Any) -> None:
    base = {**baseline_of(run(TTFTS, 40.0)), "telemetry": {"load": HOG}}
    assert is_busy(base)
    outcome = judge(run(TTFTS, 10.0, telemetry={"load": QUIET}), None, base, rules=Rules(busy=mode))
    assert outcome.kind == "pass"
    assert outcome.comparisons == ()
    assert "baseline entry was measured on a busy machine, so it is not compared" in outcome.notes

"""The machine report, sweep tables and latency-throughput curves, from JSON-shaped sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_llmperf.output.curves import capacity_label, fits_cell
from pytest_llmperf.output.report import (
    ReportRow,
    plots_available,
    render_markdown,
    terminal_table,
    write_plots,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def point(c: int, tok_s: float, tpot: float, ttft: float, *, met: bool | None = None) -> dict[str, Any]:
    p: dict[str, Any] = {
        "concurrency": c, "rate": None, "requests": 8, "completed": 8, "error_rate": 0.0,
        "output_tok_per_s": tok_s, "request_per_s": tok_s / 32, "ttft_ms": {"p50": ttft, "p95": ttft * 1.2},
        "tpot_ms": {"p50": tpot, "p95": tpot * 1.1}, "itl_ms": {"p50": tpot}, "e2e_ms": {"p50": 1000.0},
        "slo_attainment": 1.0, "goodput_rps": tok_s / 32, "goodput_tok_per_s": tok_s,
        "energy_j_per_output_token": None, "invalid": [],
    }  # fmt: skip
    if met is not None:
        p.update(met=met, reasons=[] if met else ["slo"])
    return p


SWEEP = {
    "axis": "concurrency", "loads": [1, 2, 4, 8], "gain": 0.1, "knee": 2, "knee_load": 4,
    "points": [point(1, 29, 25, 300), point(2, 45, 40, 600), point(4, 60, 60, 1200), point(8, 61, 110, 2400)],
    "peak_output_tok_per_s": 61, "stopped": None,
}  # fmt: skip
CAPACITY = {
    "search": {"by": "concurrency", "low": 1, "high": 16}, "budget": {"slo_tpot_ms": 80.0},
    "slo_attainment_min": 0.9, "slo": {"tpot_ms": 80.0}, "concurrency": 4, "concurrency_first_miss": 5,
    "concurrency_converged": True, "rate": None, "rate_step": None, "rate_first_miss": None,
    "probes": [point(1, 29, 25, 300, met=True), point(2, 45, 40, 600, met=True),
               point(4, 60, 60, 1200, met=True), point(8, 61, 110, 2400, met=False),
               point(6, 60, 90, 1800, met=False), point(5, 61, 85, 1500, met=False)],
    "at_capacity": point(4, 60, 60, 1200), "describe": "capacity 4 (5 misses the budget; 6 probes)",
    "precision": "q4_k_m", "machine": "Xeon x2, 25 GB RAM",
    "fit": {"fits": True, "checked": True, "weights_gb": 0.16, "kv_cache_gb": 0.02, "overhead_gb": 0.51,
            "total_gb": 0.69, "available": "24 GB RAM available", "reason": "..."},
}  # fmt: skip


def llm(**extra: Any) -> dict[str, Any]:
    return {
        "model": "gemma3-270m", "backend": "llamacpp", "input_tokens": 128, "output_tokens": 32,
        "concurrency": 4, "rate": None, "requests": 8, "ttft_ms": {"p50": 1200.0, "p95": 1400.0},
        "tpot_ms": {"p50": 60.0}, "e2e_ms": {"p50": 3000.0, "p95": 3100.0}, "output_tok_per_s": 60.0,
        "total_tok_per_s": 300.0, "error_rate": 0.0, "outcome": "pass", "reasons": [], "goodput_rps": 1.9,
        "slo_attainment": 1.0, **extra,
    }  # fmt: skip


def test_the_machine_report_has_a_row_per_model_with_fit_capacity_and_the_figures_there() -> None:
    rows = [
        ReportRow.from_llm("examples/test_capacity.py::test_capacity[gemma3-270m]", llm(capacity=CAPACITY)),
        ReportRow.from_llm(
            "examples/test_capacity.py::test_sweep[gemma3-270m]", llm(sweep=SWEEP, concurrency=1)
        ),
    ]
    text = render_markdown(rows)
    assert "### Capacity on Xeon x2, 25 GB RAM" in text
    assert (
        "| gemma3-270m | llamacpp | q4_k_m | yes: 0.16 GB weights + 0.02 GB KV + 0.51 GB overhead (24 GB RAM "
        "available) | 4 | 1200 / 1440 | 60.0 | 60.0 | 1.88 | - | slo_tpot_ms=80, SLO attainment >= 90% "
        "| pass |"
    ) in text
    assert "- `test_capacity[gemma3-270m]`: capacity 4 (5 misses the budget; 6 probes)" in text
    assert "### Sweep `test_sweep[gemma3-270m]` (gemma3-270m, in 128 / out 32)" in text
    assert "| c=4 (knee) | 1200 | 60.0 | 1000 | 60.0 | 1.88 | 100% | 0% |" in text
    assert (
        "Stopped: every asked load was measured. ![latency vs throughput](sweep-test_sweep_gemma3-270m.png)"
        in text
    )
    table = terminal_table(rows)
    assert "in128-out32 capacity 4" in table
    assert "in128-out32-c1 sweep, knee 4" in table


def test_capacity_labels_and_fit_cells() -> None:
    assert capacity_label({"concurrency": None, "concurrency_first_miss": 1}) == "below 1"
    assert capacity_label({"concurrency": 16, "concurrency_first_miss": None}) == ">= 16"
    assert capacity_label({"concurrency": 6, "concurrency_first_miss": 7, "rate": 18.0,
                           "search": {"by": "both"}}) == "6; 18.00 req/s"  # fmt: skip
    invalid = {
        "concurrency": None,
        "concurrency_first_miss": 1,
        "probes": [{"concurrency": 1, "invalid": ["x"]}],
    }
    assert capacity_label(invalid) == "unknown (c=1 invalid)"
    assert fits_cell({"fit": None}) == "-"
    assert fits_cell({"fit": {"checked": False}}) == "not checked"
    no = {"checked": True, "fits": False, "weights_gb": 141.0, "overhead_gb": 11.0}
    assert fits_cell({"fit": no}) == "no: 141.00 GB weights + 11.00 GB overhead"


@pytest.mark.skipif(not plots_available(), reason="matplotlib is the optional plots extra")
def test_a_sweep_and_a_capacity_search_each_get_their_curve(tmp_path: Path) -> None:
    rows = [
        ReportRow.from_llm("t.py::test_capacity[m]", llm(capacity=CAPACITY)),
        ReportRow.from_llm("t.py::test_sweep[m]", llm(sweep=SWEEP, concurrency=1)),
        ReportRow.from_llm("t.py::test_plain[m]", llm()),
    ]
    written = write_plots(tmp_path, rows)
    names = sorted(p.name for p in written)
    assert "capacity-test_capacity_m.png" in names
    assert "sweep-test_sweep_m.png" in names
    for path in written:
        assert path.read_bytes().startswith(PNG_MAGIC)

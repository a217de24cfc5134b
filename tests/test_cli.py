"""``python -m pytest_llmperf``: compare saved runs with the gate's verdict, and re-render reports."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_llmperf.cli import main
from pytest_llmperf.schema import llm_info

sys.path.insert(0, str(Path(__file__).parent / "judge"))
from judge_support import TTFTS, run


def document(path: Path, itl_ms: float, *, ttft_scale: float = 1.0) -> str:
    result = run([t * ttft_scale for t in TTFTS], itl_ms)
    llm: dict[str, Any] = dict(llm_info(result, None))
    bench = {"name": "test_x[m]", "fullname": "t.py::test_x[m]", "extra_info": {"llm": llm}, "stats": {}}
    path.write_text(json.dumps({"machine_info": {}, "benchmarks": [bench]}))
    return str(path)


def test_compare_passes_an_unchanged_run_and_fails_a_slower_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = document(tmp_path / "old.json", 10.0)
    assert main(["compare", old, document(tmp_path / "same.json", 10.0)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "t.py::test_x[m]  (1 baseline run): ok"
    assert main(["compare", old, document(tmp_path / "slow.json", 15.0)]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "t.py::test_x[m]  (1 baseline run): REGRESSION"
    tpot = next(line for line in out.splitlines() if line.strip().startswith("TPOT median"))
    assert tpot.split()[-1] == "REGRESSED"
    assert "+50.0%" in tpot
    assert "tpot_ms +50.0% vs one baseline run" in out


def test_several_old_runs_are_a_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    olds = [document(tmp_path / f"old{i}.json", 10.0 + i * 0.2) for i in range(3)]
    assert main(["compare", *olds, document(tmp_path / "new.json", 10.2)]) == 0
    assert "(3 baseline runs): ok" in capsys.readouterr().out
    # Three runs 2% apart: the bar is what they showed (+20%), not the 1% tolerance; +27% is beyond it.
    assert main(["compare", "--tolerance", "tpot_ms=1", *olds, document(tmp_path / "n2.json", 12.0)]) == 0
    assert main(["compare", "--tolerance", "tpot_ms=1", *olds, document(tmp_path / "n3.json", 13.0)]) == 1


def test_unusable_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert main(["compare", str(bad), document(tmp_path / "new.json", 10.0)]) == 2
    assert capsys.readouterr().err.startswith(f"error: baseline {bad}: is not valid JSON")
    assert main(["report", str(bad), "--out", str(tmp_path / "r")]) == 2
    with pytest.raises(SystemExit):
        main(["compare", document(tmp_path / "only.json", 10.0)])


def test_report_renders_markdown_from_saved_json(tmp_path: Path) -> None:
    assert main(["report", document(tmp_path / "run.json", 10.0), "--out", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r" / "llmperf-summary.md").read_text()
    assert "| `test_x[m]` | in8-out5-c1 |" in text

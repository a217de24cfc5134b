"""``python -m pytest_llmperf``: compare saved runs on LLM metrics, and re-render their reports.

* ``compare OLD.json [OLDER.json ...] NEW.json`` prints, per case, TTFT,
  TPOT, ITL, E2E, tok/s, goodput and (where measured) capacity side by side,
  with the verdict the gate would give: the same noise model
  (``judge.noise.compare_case``), the same tolerances (``--tolerance
  tpot_ms=3``, as ``--llm-tolerance``), history when several OLD files are
  given (newest first: the one just before NEW), the one-run floor with one.
  It exits 1 when any case regressed, 2 on unusable input, else 0.
* ``report RUN.json [RUN2.json ...] --out DIR`` writes the Markdown summary,
  the machine report and the plots from saved JSON, as ``--llm-report`` does
  at the end of a session.

It reads files and writes reports; measuring is the plugin's job.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_llmperf.errors import LlmPerfError
from pytest_llmperf.judge import verdict
from pytest_llmperf.judge.baseline import Baseline, load_baseline
from pytest_llmperf.judge.noise import (
    CaseRun,
    Correction,
    PooledSpreads,
    compare_case,
    history_spread,
    repeat_spread,
)
from pytest_llmperf.output import report
from pytest_llmperf.records import Comparison
from pytest_llmperf.schema import SAMPLE_METRICS

ROWS: tuple[tuple[str, str], ...] = (
    ("ttft_ms", "TTFT median (ms)"),
    ("tpot_ms", "TPOT median (ms)"),
    ("itl_ms", "ITL median (ms)"),
    ("e2e_ms", "E2E median (ms)"),
    ("output_tok_per_s", "tok/s per request"),
    ("run_output_tok_per_s", "output tok/s (run)"),
    ("goodput_rps", "goodput req/s"),
    ("goodput_tok_per_s", "goodput tok/s"),
    ("slo_attainment", "SLO attainment"),
    ("capacity_concurrency", "capacity (concurrency)"),
    ("capacity_rate", "capacity (req/s)"),
    ("peak_output_tok_per_s", "sweep peak tok/s"),
    ("error_rate", "error rate"),
)


def _figure(llms: Sequence[Mapping[str, Any]], metric: str) -> float | None:
    """What a saved case shows for a metric: the gate's run figure, or the entry's own value."""
    if metric in SAMPLE_METRICS:
        return CaseRun.from_entries(llms).figure(metric)
    run = CaseRun.from_entries(llms).figures.get(metric)
    if run is not None:
        return run[0]
    value = llms[-1].get("output_tok_per_s" if metric == "run_output_tok_per_s" else metric)
    return float(value) if isinstance(value, (int, float)) else None


def _fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "-"
    if metric in ("slo_attainment", "error_rate"):
        return f"{value:.1%}"
    return f"{value:.4g}"


def _change(old: float | None, new: float | None, metric: str) -> str:
    if old is None or new is None:
        return ""
    if metric in ("slo_attainment", "error_rate"):
        return f"{(new - old) * 100:+.1f} pt"
    return f"{new / old - 1:+.1%}" if old else ""


def compare_runs(
    olds: Sequence[Baseline], new: Baseline, tolerances: verdict.Tolerances
) -> tuple[list[str], bool]:
    """The comparison's lines and whether any case regressed. ``olds`` newest first."""
    keys = new.case_keys()
    comparisons_total = max(len(keys), 1) * len(SAMPLE_METRICS)
    groups = [[CaseRun.from_entries(llms) for old in olds if (llms := old.case(k))] for k in keys]
    pooled_history = {m: history_spread([g for g in groups if len(g) >= 2], m) for m in SAMPLE_METRICS}
    pooled_repeats = {m: repeat_spread([g[0] for g in groups if g], m) for m in SAMPLE_METRICS}
    lines: list[str] = []
    regressed = False
    for key in keys:
        now = new.case(key)
        history = [(old, llms) for old in olds if (llms := old.case(key))]
        if not history:
            lines += [f"{key}: new case, nothing to compare", ""]
            continue
        mismatch = verdict.entry_mismatch(history[0][1][0], now[0])
        found: tuple[Comparison, ...] = ()
        if mismatch is None:
            found = compare_case(
                [CaseRun.from_entries(llms) for _, llms in history],
                CaseRun.from_entries(now),
                tolerances,
                pooled=PooledSpreads(pooled_history if len(history) >= 2 else {}, pooled_repeats),
                correction=Correction(comparisons_total),
                samples="capacity" not in now[0],
            )
        by_metric = {c.metric: c for c in found}
        bad = [c for c in found if c.regressed]
        regressed = regressed or bool(bad)
        state = "REGRESSION" if bad else ("not compared" if mismatch else "ok")
        runs = f"{len(history)} baseline run" + ("" if len(history) == 1 else "s")
        lines.append(f"{key}  ({runs}): {state}")
        if mismatch:
            lines.append(f"  {mismatch}")
        lines.append(f"  {'metric':<24}{'baseline':>12}{'new':>12}{'change':>10}{'bar':>9}  verdict")
        for metric, label in ROWS:
            c = by_metric.get(metric)
            # What the gate compared with (a history: its median); a metric not gated: the newest run.
            old_value = c.baseline if c is not None else _figure(history[0][1], metric)
            new_value = _figure(now, metric)
            if old_value is None and new_value is None:
                continue
            bar = f"{c.bar:+.0%}" if c is not None and c.bar is not None else ""
            word = ("REGRESSED" if c.regressed else "ok") if c is not None else "(not gated)"
            lines.append(
                f"  {label:<24}{_fmt(old_value, metric):>12}{_fmt(new_value, metric):>12}"
                f"{_change(old_value, new_value, metric):>10}{bar:>9}  {word}"
            )
        lines += [f"  {c.reason()}" for c in bad]
        lines.append("")
    gone = [k for old in olds[:1] for k in old.case_keys() if not new.case(k)]
    lines += [f"{k}: in the baseline, not in the new run" for k in gone]
    return lines, regressed


def _documents(paths: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise LlmPerfError(
                f"{path}: cannot read it as JSON ({exc}); give a --benchmark-json file"
            ) from None
        if not isinstance(data, dict):
            raise LlmPerfError(f"{path}: not a pytest-benchmark JSON document")
        docs.append((path, data))
    return docs


def render(paths: Sequence[str], out: Path) -> list[Path]:
    """Markdown, machine report and plots of saved runs into ``out``; returns the files written."""
    rows = []
    for _, doc in _documents(paths):
        for bench in [*(doc.get("benchmarks") or []), *(doc.get("llmperf_unmeasured") or [])]:
            llm = (bench.get("extra_info") or {}).get("llm") if isinstance(bench, dict) else None
            if isinstance(llm, dict):
                rows.append(report.ReportRow.from_llm(str(bench.get("fullname") or bench.get("name")), llm))
    if not rows:
        raise LlmPerfError(f"{', '.join(paths)}: no llm_perf entries to render")
    written = [report.write_markdown(out, rows)]
    if report.plots_available():
        written += report.write_plots(out, [r for r in rows if r.requests])
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_llmperf", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmp = sub.add_parser("compare", help="compare saved runs on LLM metrics with the gate's verdict")
    cmp.add_argument(
        "runs", nargs="+", metavar="RUN.json", help="baseline run(s), oldest first, then the new run"
    )
    cmp.add_argument(
        "--tolerance", action="append", default=[], metavar="METRIC=PCT", help="as --llm-tolerance"
    )
    rep = sub.add_parser("report", help="write the Markdown report and plots of saved runs")
    rep.add_argument("runs", nargs="+", metavar="RUN.json")
    rep.add_argument("--out", required=True, type=Path, metavar="DIR", help="where to write them")
    args = parser.parse_args(argv)
    try:
        if args.command == "report":
            for path in render(args.runs, args.out):
                print(path)
            return 0
        if len(args.runs) < 2:
            parser.error("compare needs a baseline and a new run: compare OLD.json NEW.json")
        tolerances = verdict.parse_tolerances(args.tolerance)
        runs = [load_baseline(path) for path in args.runs]
        lines, regressed = compare_runs(runs[-2::-1], runs[-1], tolerances)
    except LlmPerfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 1 if regressed else 0

"""Reports: the terminal table, the Markdown summary, PNG plots, JUnit properties.

Everything here is derived from ``ReportRow`` values, one per ``llm_perf``
test, built from a ``RunResult`` and the test's final ``Outcome`` (a test that
measured nothing, say one whose server never started, has a row without
figures). The Markdown is GitHub-flavoured so a CI job can append it to
``$GITHUB_STEP_SUMMARY``; its summary line counts tests the way pytest's does.
Plots draw the classic curves (E2E latency against output tokens per
concurrency, output tok/s against concurrency, TTFT against input tokens),
and ``curves`` adds the machine report (capacity per model), each sweep's
points and the latency-throughput curves of sweeps and capacity searches
with matplotlib's Agg canvas, never pyplot, so no global backend is touched;
without matplotlib there are no plots (``plots_available`` tells the caller,
which says so in one line), never a warning or an error.

This module formats and writes; it must not measure, judge or change outcomes.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_llmperf.output import abreport, curves
from pytest_llmperf.records import PYTEST_WORDS, Outcome, RunResult

MARKDOWN_NAME = "llmperf-summary.md"
PLOTS_HINT = "pip install 'pytest-llmperf[plots]'"
_BADGES = {
    "pass": "✅ pass",
    "fail-budget": "❌ fail-budget",
    "fail-regression": "❌ fail-regression",
    "invalid": "⚠️ invalid",
    "fail": "❌ fail",
    "error": "⛔ error",
    "skip": "⏭️ skip",
}
_PYTEST_ORDER = ("failed", "invalid", "passed", "skipped", "error")  # as pytest's own summary line


@dataclass(frozen=True)
class ReportRow:
    """One test's figures for reports; latencies in ms, ``None`` where undefined."""

    nodeid: str
    model: str
    backend: str
    scenario: str
    input_tokens: int
    output_tokens: int
    concurrency: int
    rate: float | None
    requests: int
    ttft_ms_p50: float | None
    ttft_ms_p95: float | None
    tpot_ms_p50: float | None
    e2e_ms_p50: float | None
    e2e_ms_p95: float | None
    output_tok_per_s: float | None
    total_tok_per_s: float | None
    error_rate: float | None
    outcome: str
    reason: str
    goodput_rps: float | None = None
    slo_attainment: float | None = None
    sweep: Mapping[str, Any] | None = None
    capacity: Mapping[str, Any] | None = None
    ab: Mapping[str, Any] | None = None

    @classmethod
    def from_result(cls, nodeid: str, result: RunResult, outcome: Outcome | None = None) -> ReportRow:
        s, sc = result.summary, result.scenario
        sweep, capacity, ab = result.extra.get("sweep"), result.extra.get("capacity"), result.extra.get("ab")
        return cls(
            nodeid=nodeid,
            model=result.model,
            backend=result.backend,
            scenario=sc.name,
            input_tokens=sc.input_tokens,
            output_tokens=sc.output_tokens,
            concurrency=sc.concurrency,
            rate=sc.rate,
            requests=s.requests,
            ttft_ms_p50=s.ttft_ms.p50 if s.ttft_ms else None,
            ttft_ms_p95=s.ttft_ms.p95 if s.ttft_ms else None,
            tpot_ms_p50=s.tpot_ms.p50 if s.tpot_ms else None,
            e2e_ms_p50=s.e2e_ms.p50 if s.e2e_ms else None,
            e2e_ms_p95=s.e2e_ms.p95 if s.e2e_ms else None,
            output_tok_per_s=s.output_tok_per_s,
            total_tok_per_s=s.total_tok_per_s,
            error_rate=s.error_rate,
            outcome=outcome.kind if outcome is not None else "",
            reason=outcome.reason if outcome is not None else "",
            goodput_rps=s.goodput_rps,
            slo_attainment=s.slo_attainment,
            sweep=sweep if isinstance(sweep, Mapping) else None,
            capacity=capacity if isinstance(capacity, Mapping) else None,
            ab=ab if isinstance(ab, Mapping) else None,
        )

    @classmethod
    def from_llm(cls, nodeid: str, llm: Mapping[str, Any]) -> ReportRow:
        """A row from a saved entry's ``extra_info["llm"]`` (re-rendering a run from its JSON)."""

        def stat(metric: str, name: str) -> float | None:
            dist = llm.get(metric)
            return dist.get(name) if isinstance(dist, Mapping) else None

        rate, c = llm.get("rate"), int(llm.get("concurrency") or 0)
        load = f"c{c}" if rate is None else f"r{rate:g}c{c}"
        sweep, capacity, ab = llm.get("sweep"), llm.get("capacity"), llm.get("ab")
        return cls(
            nodeid=nodeid, model=str(llm.get("model", "")), backend=str(llm.get("backend", "")),
            scenario=f"in{llm.get('input_tokens')}-out{llm.get('output_tokens')}-{load}",
            input_tokens=int(llm.get("input_tokens") or 0), output_tokens=int(llm.get("output_tokens") or 0),
            concurrency=c, rate=rate, requests=int(llm.get("requests") or 0),
            ttft_ms_p50=stat("ttft_ms", "p50"), ttft_ms_p95=stat("ttft_ms", "p95"),
            tpot_ms_p50=stat("tpot_ms", "p50"), e2e_ms_p50=stat("e2e_ms", "p50"),
            e2e_ms_p95=stat("e2e_ms", "p95"),
            output_tok_per_s=llm.get("output_tok_per_s"), total_tok_per_s=llm.get("total_tok_per_s"),
            error_rate=llm.get("error_rate"), outcome=str(llm.get("outcome", "")),
            reason=next(iter(llm.get("reasons") or []), ""), goodput_rps=llm.get("goodput_rps"),
            slo_attainment=llm.get("slo_attainment"),
            sweep=sweep if isinstance(sweep, Mapping) else None,
            capacity=capacity if isinstance(capacity, Mapping) else None,
            ab=ab if isinstance(ab, Mapping) else None,
        )  # fmt: skip

    @property
    def case(self) -> str:
        """The case as tables name it: the scenario, or what a sweep or capacity search measured."""
        if self.sweep:
            knee = self.sweep.get("knee_load")
            return f"{self.scenario} sweep" + (f", knee {knee:g}" if isinstance(knee, (int, float)) else "")
        if self.capacity:
            found = curves.capacity_label(self.capacity)
            return f"in{self.input_tokens}-out{self.output_tokens} capacity {found}"
        return self.scenario

    @classmethod
    def unmeasured(cls, nodeid: str, model: str, backend: str, outcome: Outcome) -> ReportRow:
        """A test that measured nothing (its server never started, an argument was refused)."""
        return cls(
            nodeid=nodeid, model=model, backend=backend, scenario="-", input_tokens=0, output_tokens=0,
            concurrency=0, rate=None, requests=0, ttft_ms_p50=None, ttft_ms_p95=None, tpot_ms_p50=None,
            e2e_ms_p50=None, e2e_ms_p95=None, output_tok_per_s=None, total_tok_per_s=None,
            error_rate=None, outcome=outcome.kind, reason=outcome.reason,
        )  # fmt: skip

    @property
    def test(self) -> str:
        """The test's name without its file: ``test_decode[gemma3-270m-64-4]``."""
        return self.nodeid.rpartition("::")[2] or self.scenario


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.1f}"


def _pct(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0%}" if value in (0.0, 1.0) else f"{value:.1%}"


_COLUMNS = (
    "model",
    "test",
    "case",
    "TTFT p50 ms",
    "TTFT p95 ms",
    "TPOT p50 ms",
    "out tok/s",
    "errors",
    "outcome",
)


def _cells(row: ReportRow) -> tuple[str, ...]:
    return (
        row.model,
        row.test,
        row.case,
        _num(row.ttft_ms_p50),
        _num(row.ttft_ms_p95),
        _num(row.tpot_ms_p50),
        _num(row.output_tok_per_s),
        _pct(row.error_rate),
        row.outcome or "-",
    )


def terminal_table(rows: Sequence[ReportRow]) -> str:
    """The end-of-session table, one line per test grouped by model, then failing reasons."""
    ordered = sorted(rows, key=lambda r: r.model)  # stable: keeps run order within a model
    table = [_COLUMNS, *(_cells(r) for r in ordered)]
    widths = [max(len(line[i]) for line in table) for i in range(len(_COLUMNS))]
    numeric = {3, 4, 5, 6, 7}
    lines = [
        "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [f"{r.nodeid}: {r.outcome}: {r.reason}" for r in ordered if r.outcome not in ("", "pass")]
    return "\n".join(line.rstrip() for line in lines)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def headline(rows: Sequence[ReportRow]) -> str:
    """``4 tests: 3 failed, 1 passed (1 fail-budget, 2 fail)``: pytest's counts, then the kinds."""
    word_of = {str(kind): word for kind, word in PYTEST_WORDS.items()}
    words = [word_of.get(r.outcome, "passed") for r in rows if r.outcome]
    counts = ", ".join(f"{words.count(w)} {w}" for w in _PYTEST_ORDER if w in words)
    kinds = {kind: sum(r.outcome == kind for r in rows) for kind in _BADGES if kind != "pass"}
    detail = ", ".join(f"{n} {kind}" for kind, n in kinds.items() if n)
    tests = f"{len(rows)} test" + ("" if len(rows) == 1 else "s")
    return f"{tests}: {counts}" + (f" ({detail})" if detail else "")


def render_markdown(rows: Sequence[ReportRow]) -> str:
    """A GitHub-flavoured summary: counts, a table per model, then every failing reason."""
    out = [f"## LLM performance: {headline(rows)}", ""]
    models: dict[tuple[str, str], list[ReportRow]] = {}
    for row in rows:
        models.setdefault((row.model, row.backend), []).append(row)
    for (model, backend), group in models.items():
        out += [
            f"### {_md(model)} ({_md(backend)})",
            "",
            "| Test | Case | TTFT p50 (ms) | TTFT p95 (ms) | TPOT p50 (ms) | E2E p50 (ms) "
            "| Output tok/s | Goodput req/s | SLO met | Errors | Outcome |",
            "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|",
        ]
        out += [
            f"| `{_md(r.test)}` | {_md(r.case)} | {_num(r.ttft_ms_p50)} | {_num(r.ttft_ms_p95)} "
            f"| {_num(r.tpot_ms_p50)} | {_num(r.e2e_ms_p50)} | {_num(r.output_tok_per_s)} "
            f"| {_num(r.goodput_rps)} | {_pct(r.slo_attainment)} "
            f"| {_pct(r.error_rate)} | {_BADGES.get(r.outcome, r.outcome or '-')} |"
            for r in group
        ]
        out.append("")
    out += curves.machine_tables(rows)
    out += curves.sweep_tables(rows)
    out += abreport.ab_tables(rows)
    failing = [r for r in rows if r.outcome not in ("", "pass")]
    if failing:
        out += ["### Failures", ""]
        out += [f"- `{_md(r.nodeid)}`: **{r.outcome}**: {_md(r.reason)}" for r in failing]
        out.append("")
    return "\n".join(out)


def write_markdown(directory: Path, rows: Sequence[ReportRow]) -> Path:
    """Write :func:`render_markdown` to ``directory/llmperf-summary.md`` and return the path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / MARKDOWN_NAME
    path.write_text(render_markdown(rows), encoding="utf-8")
    return path


def junit_properties(result: RunResult, outcome: Outcome | None) -> list[tuple[str, object]]:
    """``(name, value)`` pairs for ``record_property``; figures that are undefined are left out."""
    row = ReportRow.from_result("", result, outcome)
    pairs: list[tuple[str, object]] = [
        ("llm_model", row.model),
        ("llm_backend", row.backend),
        ("llm_scenario", row.scenario),
        ("llm_input_tokens", row.input_tokens),
        ("llm_output_tokens", row.output_tokens),
        ("llm_concurrency", row.concurrency),
        ("llm_requests", row.requests),
    ]
    figures: dict[str, float | None] = {
        "llm_ttft_ms_p50": row.ttft_ms_p50,
        "llm_ttft_ms_p95": row.ttft_ms_p95,
        "llm_tpot_ms_p50": row.tpot_ms_p50,
        "llm_e2e_ms_p50": row.e2e_ms_p50,
        "llm_output_tok_per_s": row.output_tok_per_s,
        "llm_error_rate": row.error_rate,
    }
    pairs += [(name, round(value, 3)) for name, value in figures.items() if value is not None]
    if outcome is not None:
        pairs.append(("llm_outcome", outcome.kind))
        pairs += [("llm_reason", reason) for reason in outcome.reasons]
    return pairs


# -- plots ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Chart:
    """One classic curve: ``y`` against ``x``, one line per value of ``group``."""

    file: str
    x: str
    y: str
    band: str | None
    group: tuple[str, ...]
    group_names: tuple[str, ...]
    title: str
    xlabel: str
    ylabel: str
    log_x: bool = False


CHARTS = (
    _Chart(
        "e2e_vs_output_tokens.png", "output_tokens", "e2e_ms_p50", "e2e_ms_p95",
        ("model", "input_tokens", "concurrency"), ("", "input", "concurrency"),
        "E2E latency vs output tokens", "output tokens per request",
        "E2E latency (ms): line p50, band to p95",
    ),
    _Chart(
        "output_tok_per_s_vs_concurrency.png", "concurrency", "output_tok_per_s", None,
        ("model", "input_tokens", "output_tokens"), ("", "input", "output"),
        "Output throughput vs concurrency", "concurrent requests", "output tokens per second (whole run)",
        log_x=True,
    ),
    _Chart(
        "ttft_vs_input_tokens.png", "input_tokens", "ttft_ms_p50", "ttft_ms_p95",
        ("model", "output_tokens", "concurrency"), ("", "output", "concurrency"),
        "Time to first token vs input tokens", "input tokens per request", "TTFT (ms): line p50, band to p95",
    ),
)  # fmt: skip
PLOT_NAMES = tuple(chart.file for chart in CHARTS)

Series = dict[tuple[str | int, ...], dict[int, ReportRow]]


def _series(rows: Sequence[ReportRow], chart: _Chart) -> Series:
    """Rows grouped into lines; a case measured twice shows its last run."""
    series: Series = {}
    for row in rows:
        key = tuple(getattr(row, name) for name in chart.group)
        series.setdefault(key, {})[int(getattr(row, chart.x))] = row
    return dict(sorted(series.items()))  # model name, then numbers in numeric order


def _label(key: tuple[str | int, ...], names: Sequence[str], varying: Sequence[int]) -> str:
    parts = [f"{names[i]}={key[i]}" if names[i] else str(key[i]) for i in varying]
    return ", ".join(parts) or "all cases"


def _draw(path: Path, chart: _Chart, rows: Sequence[ReportRow]) -> bool:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A line needs two x values; cases alone on their line (an input-length
    # sweep seen from the output-length chart) stay in the tables only.
    series = {key: points for key, points in _series(rows, chart).items() if len(points) >= 2}
    if not series:
        return False
    xs_all = sorted({xv for points in series.values() for xv in points})
    varying = [i for i in range(len(chart.group)) if len({k[i] for k in series}) > 1]
    fixed = [i for i in range(len(chart.group)) if i not in varying]
    title = (
        f"{chart.title} ({_label(next(iter(series)), chart.group_names, fixed)})" if fixed else chart.title
    )
    fig = Figure(figsize=(7.5, 4.6), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for key, points in series.items():
        kept = [points[x] for x in sorted(points) if getattr(points[x], chart.y) is not None]
        if not kept:
            continue
        xs = [getattr(r, chart.x) for r in kept]
        ys = [getattr(r, chart.y) for r in kept]
        (line,) = ax.plot(xs, ys, marker="o", label=_label(key, chart.group_names, varying))
        highs = [getattr(r, chart.band) for r in kept] if chart.band else []
        if highs and all(h is not None for h in highs):
            ax.fill_between(xs, ys, highs, alpha=0.15, color=line.get_color())
    if chart.log_x:
        ax.set_xscale("log", base=2)
    ax.set_xticks(xs_all, [str(v) for v in xs_all])
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.set_xlabel(chart.xlabel)
    ax.set_ylabel(chart.ylabel)
    ax.grid(True, alpha=0.3)
    if varying:
        ax.legend(fontsize="small")
    fig.savefig(path)
    return True


def plots_available() -> bool:
    """Whether matplotlib can be imported (it is the optional ``plots`` extra)."""
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        return False


def write_plots(directory: Path, items: Sequence[RunResult | ReportRow]) -> list[Path]:
    """Draw the classic curves of the closed-loop cases into PNGs; return the files written.

    A chart with no line of at least two points (every case shares its x
    value) is skipped, and so is everything without matplotlib (see
    ``plots_available``; ``PLOTS_HINT`` says how to get it).
    """
    if not plots_available():
        return []
    rows = [i if isinstance(i, ReportRow) else ReportRow.from_result("", i) for i in items]
    directory.mkdir(parents=True, exist_ok=True)
    drawn = curves.write_curves(directory, [r for r in rows if r.nodeid])
    drawn += abreport.write_ab_plots(directory, [r for r in rows if r.nodeid])
    rows = [r for r in rows if r.rate is None]  # open-loop cases have no fixed concurrency to plot against
    return [directory / c.file for c in CHARTS if _draw(directory / c.file, c, rows)] + drawn

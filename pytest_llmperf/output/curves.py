"""Sweeps and capacity in the report: the machine table, the points, and the latency-throughput curves.

Reads the JSON-shaped ``sweep`` and ``capacity`` sections (``schema.sweep_info``,
``judge.capacity.capacity_info``) that a live session and a saved run both
hold, so ``python -m pytest_llmperf report RUN.json`` draws the same thing:

* **the machine report**: one table per machine, a row per capacity test:
  model, precision, whether it fits (the memory figures), the capacity at the
  budget, TTFT/TPOT and output tok/s at that point, energy per token where a
  GPU measured it;
* each sweep's points, the knee marked and why the sweep stopped;
* PNGs: ``sweep-<test>.png`` (TPOT and TTFT against output tok/s, one point
  per load, the knee marked) and ``capacity-<test>.png`` (the probes, met or
  missed, the capacity marked), drawn with matplotlib's Agg canvas.

This module formats and writes; it must not measure or judge.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pytest_llmperf.output.requestlog import file_stem


class Row(Protocol):
    """What these sections read of a report row (``report.ReportRow``)."""

    @property
    def model(self) -> str: ...

    @property
    def backend(self) -> str: ...

    @property
    def input_tokens(self) -> int: ...

    @property
    def output_tokens(self) -> int: ...

    @property
    def sweep(self) -> Mapping[str, Any] | None: ...

    @property
    def capacity(self) -> Mapping[str, Any] | None: ...

    @property
    def outcome(self) -> str: ...

    @property
    def test(self) -> str: ...


def _num(value: object, digits: int = 1) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.{digits}f}"


def _pct(value: object) -> str:
    return f"{value:.0%}" if isinstance(value, (int, float)) else "-"


def _get(point: Mapping[str, Any] | None, metric: str, stat: str | None = None) -> Any:
    if not point:
        return None
    value = point.get(metric)
    return value.get(stat) if stat is not None and isinstance(value, Mapping) else value


def fits_cell(capacity: Mapping[str, Any]) -> str:
    """``yes: 0.17 GB weights + 0.02 GB KV + 0.51 GB overhead (23 GB RAM available)``."""
    fit = capacity.get("fit")
    if not isinstance(fit, Mapping):
        return "-"
    if not fit.get("checked"):
        return "not checked"
    verdict = "yes" if fit.get("fits") else "no"
    parts = [f"{_num(fit.get('weights_gb'), 2)} GB weights"]
    if fit.get("kv_cache_gb") is not None:
        parts.append(f"{_num(fit.get('kv_cache_gb'), 2)} GB KV")
    parts.append(f"{_num(fit.get('overhead_gb'), 2)} GB overhead")
    available = f" ({fit['available']})" if fit.get("available") else ""
    return f"{verdict}: {' + '.join(parts)}{available}"


def _budget_cell(capacity: Mapping[str, Any]) -> str:
    items = [f"{k}={v:g}" for k, v in sorted((capacity.get("budget") or {}).items())]
    floor = capacity.get("slo_attainment_min")
    if floor is not None and "slo_attainment_min" not in (capacity.get("budget") or {}):
        items.append(f"SLO attainment >= {floor:.0%}")
    return ", ".join(items) or "-"


def capacity_label(capacity: Mapping[str, Any]) -> str:
    """``c=6`` / ``< 1`` (nothing met) / ``>= 32`` (the upper bound met), plus the rate where searched."""
    best, miss = capacity.get("concurrency"), capacity.get("concurrency_first_miss")
    search = capacity.get("search") or {}
    probes = capacity.get("probes") or []
    if best is None and probes and probes[0].get("invalid"):
        # The lowest load could not be measured: that says nothing about the budget.
        text = f"unknown (c={probes[0].get('concurrency')} invalid)"
    elif best is None and miss is None:
        text = "-"
    elif best is None:
        text = f"below {miss}"
    elif miss is None:
        text = f">= {best}"
    else:
        text = str(best)
    rate = capacity.get("rate")
    if rate is not None or search.get("by") in ("rate", "both"):
        text += f"; {_num(rate, 2)} req/s" if rate is not None else "; rate -"
    return text


def machine_tables(rows: Sequence[Row]) -> list[str]:
    """The machine report: one Markdown table per machine, a row per capacity test."""
    machines: dict[str, list[Row]] = {}
    for row in rows:
        if row.capacity:
            machines.setdefault(str(row.capacity.get("machine") or "this machine"), []).append(row)
    out: list[str] = []
    for machine, group in machines.items():
        out += [
            f"### Capacity on {machine}",
            "",
            "| Model | Backend | Precision | Fits (memory) | Capacity (concurrency; req/s) "
            "| TTFT p50/p95 (ms) | TPOT p50 (ms) | Output tok/s | Goodput req/s | J/token "
            "| Budget | Outcome |",
            "|---|---|---|---|--:|--:|--:|--:|--:|--:|---|---|",
        ]
        for row in group:
            cap = row.capacity or {}
            at = cap.get("at_capacity") if cap.get("concurrency") is not None else None
            ttft = f"{_num(_get(at, 'ttft_ms', 'p50'))} / {_num(_get(at, 'ttft_ms', 'p95'))}" if at else "-"
            out.append(
                f"| {row.model} | {row.backend} | {cap.get('precision') or '-'} | {fits_cell(cap)} "
                f"| {capacity_label(cap)} | {ttft} | {_num(_get(at, 'tpot_ms', 'p50'))} "
                f"| {_num(_get(at, 'output_tok_per_s'))} | {_num(_get(at, 'goodput_rps'), 2)} "
                f"| {_num(_get(at, 'energy_j_per_output_token'), 3)} | {_budget_cell(cap)} "
                f"| {row.outcome or '-'} |"
            )
        out.append("")
        out += [f"- `{r.test}`: {r.capacity.get('describe') or ''}" for r in group if r.capacity]
        out.append("")
    return out


def _load_name(sweep: Mapping[str, Any], point: Mapping[str, Any]) -> str:
    return (
        f"c={point.get('concurrency')}" if sweep.get("axis") == "concurrency" else f"{point.get('rate'):g}/s"
    )


def sweep_tables(rows: Sequence[Row]) -> list[str]:
    """Each sweep's points (the knee starred) and why it stopped."""
    out: list[str] = []
    for row in rows:
        sweep = row.sweep
        if not sweep:
            continue
        out += [
            f"### Sweep `{row.test}` ({row.model}, in {row.input_tokens} / out {row.output_tokens})",
            "",
            "| Load | TTFT p50 (ms) | TPOT p50 (ms) | E2E p50 (ms) | Output tok/s | Goodput req/s "
            "| SLO met | Errors |",
            "|---|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for i, point in enumerate(sweep.get("points") or []):
            star = " (knee)" if i == sweep.get("knee") else ""
            out.append(
                f"| {_load_name(sweep, point)}{star} | {_num(_get(point, 'ttft_ms', 'p50'))} "
                f"| {_num(_get(point, 'tpot_ms', 'p50'))} | {_num(_get(point, 'e2e_ms', 'p50'))} "
                f"| {_num(point.get('output_tok_per_s'))} | {_num(point.get('goodput_rps'), 2)} "
                f"| {_pct(point.get('slo_attainment'))} | {_pct(point.get('error_rate'))} |"
            )
        stopped = sweep.get("stopped") or "every asked load was measured"
        out += ["", f"Stopped: {stopped}. ![latency vs throughput]({curve_name('sweep', row)})", ""]
    return out


def _load_key(point: Mapping[str, Any]) -> tuple[float, float]:
    rate = point.get("rate")
    return (1.0, float(rate)) if rate is not None else (0.0, float(point.get("concurrency") or 0))


def curve_name(kind: str, row: Row) -> str:
    return f"{kind}-{file_stem(row.test)}.png"


@dataclass(frozen=True)
class Curve:
    """One figure: latency against throughput over a sweep's points or a search's probes.

    ``labels`` name each point; ``marked`` is the index starred as
    ``mark_label`` (the knee, the capacity); ``met`` colours each probe by
    whether it met the budget (``None``: one colour, joined in order);
    ``limits`` draws a metric's per-request limit as a line.
    """

    title: str
    points: Sequence[Mapping[str, Any]]
    labels: Sequence[str]
    marked: int | None
    mark_label: str
    met: Sequence[bool] | None = None
    limits: Mapping[str, float] = field(default_factory=dict)


def _draw(path: Path, curve: Curve) -> bool:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points, labels, marked, met = curve.points, curve.labels, curve.marked, curve.met
    usable = [i for i, p in enumerate(points) if p.get("output_tok_per_s") is not None]
    if not usable:
        return False
    fig = Figure(figsize=(8.5, 4.6), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, metric, name in ((axes[0], "tpot_ms", "TPOT p50 (ms)"), (axes[1], "ttft_ms", "TTFT p50 (ms)")):
        xs = [points[i]["output_tok_per_s"] for i in usable]
        ys = [_get(points[i], metric, "p50") for i in usable]
        if met is None:
            ax.plot(xs, ys, marker="o", color="tab:blue")
        else:
            # Probes join in load order (the search visits them out of order).
            order = sorted(range(len(usable)), key=lambda k: _load_key(points[usable[k]]))
            ax.plot([xs[k] for k in order], [ys[k] for k in order], color="tab:gray", alpha=0.4)
            for k, i in enumerate(usable):
                ax.plot(xs[k], ys[k], marker="o", color="tab:green" if met[i] else "tab:red")
        for k, i in enumerate(usable):
            ax.annotate(
                labels[i], (xs[k], ys[k]), textcoords="offset points", xytext=(4, 4), fontsize="small"
            )
        if marked is not None and marked in usable:
            k = usable.index(marked)
            ax.plot(
                xs[k], ys[k], marker="*", markersize=18, color="tab:orange", label=curve.mark_label, zorder=5
            )
            ax.legend(fontsize="small", loc="best")
        limit = curve.limits.get(metric)
        if limit is not None:
            ax.axhline(
                limit, color="tab:red", linestyle="--", linewidth=1, label=f"per-request limit {limit:g} ms"
            )
            ax.legend(fontsize="small", loc="best")
        ax.set_xlabel("output tokens per second (whole run)")
        ax.set_ylabel(name)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    head, _, detail = curve.title.partition("\n")
    fig.suptitle(head + (f"\n{detail}" if detail else ""), fontsize="medium")
    fig.savefig(path)
    return True


def write_curves(directory: Path, rows: Sequence[Row]) -> list[Path]:
    """Draw every sweep's and capacity search's curve; return the files written (needs matplotlib)."""
    written = []
    for row in rows:
        if row.sweep:
            sweep = row.sweep
            points = list(sweep.get("points") or [])
            knee = sweep.get("knee")
            # A point that cannot be trusted (client saturated, busy machine) says so on the curve.
            labels = [_load_name(sweep, p) + (" (invalid)" if p.get("invalid") else "") for p in points]
            mark = (
                f"knee {_load_name(sweep, points[knee])}"
                if isinstance(knee, int) and knee < len(points)
                else "knee"
            )
            title = f"{row.model}: latency vs throughput, in {row.input_tokens} / out {row.output_tokens}"
            path = directory / curve_name("sweep", row)
            if _draw(path, Curve(title, points, labels, marked=knee, mark_label=mark)):
                written.append(path)
        if row.capacity:
            cap = row.capacity
            probes = [*(cap.get("probes") or []), *(cap.get("rate_probes") or [])]
            labels = [
                (f"c={p.get('concurrency')}" if p.get("rate") is None else f"{p['rate']:g}/s")
                + (" (invalid)" if p.get("invalid") else "")
                for p in probes
            ]
            best = cap.get("concurrency")
            marked = next((i for i, p in enumerate(probes) if p.get("met") and p.get("rate") is None
                           and p.get("concurrency") == best), None)  # fmt: skip
            budget = _budget_cell(cap)
            budget = budget if len(budget) <= 110 else budget[:107] + "..."
            title = (
                f"{row.model}: capacity {capacity_label(cap)} (green: met the budget, red: missed)\n{budget}"
            )
            path = directory / curve_name("capacity", row)
            met = [bool(p.get("met")) for p in probes]
            slo = cap.get("slo") or {}
            curve = Curve(title, probes, labels, marked, f"capacity c={best}", met=met, limits=slo)
            if _draw(path, curve):
                written.append(path)
    return written

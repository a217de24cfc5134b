"""A/B cases in the report: a table of verdicts, and a plot per case of its blocks over time.

The plot shows why the paired design works: each side's TPOT per block
against the block's start (the machine's drift, shared by both lines), and
the per-block ratio candidate/baseline beside it (flat when only drift moved
them), with the geometric mean and its interval. Reads ``extra_info["llm"]
["ab"]`` (``judge.paired.ab_info``); draws with matplotlib's Agg canvas.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from pytest_llmperf.output.requestlog import file_stem

PLOTTED = ("tpot_ms", "ttft_ms")


class Row(Protocol):
    @property
    def test(self) -> str: ...

    @property
    def ab(self) -> Mapping[str, Any] | None: ...


def ab_tables(rows: Sequence[Row]) -> list[str]:
    """``### A/B`` Markdown: each case's verdict line, blocks counted and dropped."""
    cases = [r for r in rows if r.ab]
    if not cases:
        return []
    out = [
        "### A/B: candidate vs baseline, interleaved",
        "",
        "| Test | Verdict | Valid blocks | Dropped | Fails from | Noise bound |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for r in cases:
        ab = r.ab or {}
        dropped = len(ab.get("dropped") or [])
        out.append(
            f"| `{r.test}` | {ab.get('line', '')} | {ab.get('valid_blocks', '-')} | {dropped} "
            f"| {_pct(ab.get('detectable_change'))} | {_pct(ab.get('noise_bound'))} |"
        )
    return [*out, ""]


def ab_name(row: Row) -> str:
    return f"ab-{file_stem(row.test)}.png"


def write_ab_plots(directory: Path, rows: Sequence[Row]) -> list[Path]:
    """One PNG per A/B case: both sides per block over time, and their ratio (needs matplotlib)."""
    written = []
    for row in rows:
        if row.ab and _draw(directory / ab_name(row), row.test, row.ab):
            written.append(directory / ab_name(row))
    return written


def _draw(path: Path, title: str, ab: Mapping[str, Any]) -> bool:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    blocks: Sequence[Mapping[str, Any]] = ab.get("blocks") or []
    metric = next((m for m in PLOTTED if any((b.get("ratios") or {}).get(m) for b in blocks)), None)
    if metric is None:
        return False
    fig = Figure(figsize=(9, 4.2), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    sides, ratios = fig.subplots(1, 2)
    t = [float(b.get("started_s") or 0.0) for b in blocks]
    for side, colour in (("baseline", "tab:blue"), ("candidate", "tab:orange")):
        ys = [(b.get(side) or {}).get(metric) for b in blocks]
        sides.plot(t, ys, marker="o", color=colour, label=side)
    for x, b in zip(t, blocks, strict=True):
        if b.get("dropped"):
            sides.axvline(x, color="tab:red", alpha=0.3, linewidth=4)
    sides.set_xlabel("block start (s into the case)")
    sides.set_ylabel(f"{metric} p50 per block")
    sides.set_ylim(bottom=0)
    sides.grid(True, alpha=0.3)
    sides.legend(fontsize="small")
    rs = [(b.get("ratios") or {}).get(metric) for b in blocks]
    ratios.plot(t, rs, marker="o", color="tab:green", label="candidate / baseline")
    found = next((m for m in ab.get("metrics") or [] if m.get("metric") == metric), None)
    if found is not None:
        ratios.axhline(found["ratio"], color="tab:green", linestyle="--", linewidth=1, label="geometric mean")
        ratios.axhspan(found["ci_low"], found["ci_high"], color="tab:green", alpha=0.15, label="95% CI")
    ratios.axhline(1.0, color="tab:gray", linewidth=1)
    ratios.set_xlabel("block start (s into the case)")
    ratios.set_ylabel(f"{metric} ratio")
    ratios.grid(True, alpha=0.3)
    ratios.legend(fontsize="small")
    fig.suptitle(f"{title}\n{ab.get('line', '')}", fontsize="small")
    fig.savefig(path)
    return True


def _pct(value: object) -> str:
    return f"{value * 100:.1f}%" if isinstance(value, (int, float)) else "-"

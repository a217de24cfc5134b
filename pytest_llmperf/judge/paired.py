"""Paired A/B statistics: baseline and candidate measured in interleaved blocks, judged on their ratios.

Within one session both sides share the machine's drift (other tenants,
clocks, thermal state): a case whose TPOT wanders 1.2-1.45x over minutes
keeps a per-block ratio candidate/baseline with a log-sd near 0.07 on
llama-server (issue 19). So the unit here is the *block*: each block
measures both sides back to back (in ``AB`` or ``BA`` order, alternating
from a seeded start, so neither side always goes first), and for each
metric the figure of a side in a block is the median of its requests'
values (``figures``). The verdict reads only the per-block
log ratios ``x_b = log(candidate_b / baseline_b)``:

* the estimate is their mean (the geometric mean ratio) with a Student-t
  interval (``CONFIDENCE`` two-sided, shown in every artifact);
* a metric regresses when its worse-direction change is larger than both
  the tolerance and the one-sided bound ``t(1 - alpha/m, n-1) * sd/sqrt(n)``,
  with ``alpha/m`` Bonferroni over the session's comparisons (cases x
  metrics), as the history gate does (``judge.noise``): an unchanged
  (A/A) session fails anywhere with a chance below ``SESSION_ALPHA``;
* that bar, ``max(tolerance, bound)``, is the smallest change the run could
  have caught (about half the time; a change of twice the bound is caught
  nearly always): the A/A self-check reports it;
* a block where either side could not be trusted (a busy machine, a
  saturated client, failed requests) is dropped and counted; fewer than
  ``MIN_BLOCKS`` valid blocks is *invalid*, never a pass.

This module only computes: no files, no pytest, no servers.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import median

from pytest_llmperf.judge.noise import SESSION_ALPHA
from pytest_llmperf.measure.stats import t_quantile
from pytest_llmperf.records import HIGHER_IS_BETTER, Outcome, OutcomeKind, RunResult
from pytest_llmperf.schema import SAMPLE_METRICS, request_samples

PAIRED_METRICS = SAMPLE_METRICS
DECODE_METRICS = ("tpot_ms", "itl_ms", "e2e_ms")
MIN_BLOCKS = 4
"""Valid blocks needed for a verdict: with fewer, the t interval is too wide to say anything."""
CONFIDENCE = 0.95
DEFAULT_TOLERANCE = 0.03
"""A change smaller than 3% is not a regression, however certain. Two llama-server processes
started alike on this 2-core VM differed systematically by up to 2% in TPOT in A/A sessions
(``benchmarks/ab_quality.py``): a difference between processes, not a change to catch."""

Figures = Mapping[str, float | None]


def figures(result: RunResult) -> dict[str, float | None]:
    """One side's figures in one block: the median of its requests' values, as the history gate
    takes a case's figure (``schema.request_samples``: TTFT, TPOT, E2E, each request's mean
    inter-token gap, its output tok/s).

    Per-request values, not the block's pooled token gaps: under a CPU quota those gaps are
    bimodal (a token on either side of a throttled period), and their median jumps between the
    modes (A/A sessions here showed ITL p50 +4-5% with TPOT at 1.00); a request's mean gap does not.
    """
    s = request_samples(result)
    samples = {"ttft_ms": s["ttft_ms"], "tpot_ms": s["tpot_ms"], "e2e_ms": s["e2e_ms"], "itl_ms": s["itl_ms"],
               "output_tok_per_s": s["output_tok_per_s"]}  # fmt: skip
    return {metric: (median(samples[metric]) if samples[metric] else None) for metric in PAIRED_METRICS}


def orders(blocks: int, seed: int) -> list[str]:
    """``AB``/``BA`` per block: alternating (ABBA...) from a seeded start, so drift within a pair cancels."""
    first = random.Random(f"ab/{seed}").choice(("AB", "BA"))
    other = "BA" if first == "AB" else "AB"
    return [first if i % 2 == 0 else other for i in range(blocks)]


@dataclass(frozen=True)
class Block:
    """Both sides' figures in one block, and why it was dropped (``None``: it counts)."""

    index: int
    order: str
    baseline: Figures
    candidate: Figures
    dropped: str | None = None
    started_s: float = 0.0
    """When the block began, in seconds from the case's first block (the plot's time axis)."""

    def log_ratio(self, metric: str) -> float | None:
        b, c = self.baseline.get(metric), self.candidate.get(metric)
        if b is None or c is None or b <= 0 or c <= 0:
            return None
        return math.log(c / b)


@dataclass(frozen=True)
class PairedMetric:
    """One metric's paired verdict; ratios are candidate/baseline in the metric's own units."""

    metric: str
    blocks: int
    ratio: float
    low: float
    high: float
    bar: float
    """The smallest worse-direction change, relative, that this run fails on: max(tolerance, bound)."""
    bound: float
    """The noise part of the bar: the Bonferroni one-sided bound of the blocks' ratios, relative."""
    regressed: bool

    def line(self) -> str:
        """``candidate tpot_ms +9.8% (95% CI +7.1..+12.6%) over 6 blocks vs baseline``."""
        pct = CONFIDENCE * 100
        return (
            f"candidate {self.metric} {_pct(self.ratio - 1)} ({pct:.0f}% CI {_pct(self.low - 1)}.."
            f"{_pct(self.high - 1)}) over {self.blocks} blocks vs baseline"
        )


@dataclass(frozen=True)
class PairedVerdict:
    """Every metric's paired verdict, the blocks that counted, and those dropped with their reason."""

    metrics: tuple[PairedMetric, ...]
    valid_blocks: int
    dropped: tuple[str, ...]
    invalid: str | None = None

    @property
    def regressions(self) -> tuple[PairedMetric, ...]:
        return tuple(m for m in self.metrics if m.regressed)

    def detectable(self) -> float | None:
        """The smallest change the run could have caught in its most precise decode metric (relative)."""
        bars = [m.bar for m in self.metrics if m.metric in DECODE_METRICS]
        return min(bars) if bars else None

    def noise_bound(self) -> float | None:
        """The noise part of ``detectable``: what the blocks alone resolve, whatever the tolerance."""
        bounds = [m.bound for m in self.metrics if m.metric in DECODE_METRICS]
        return min(bounds) if bounds else None

    def reasons(self) -> tuple[str, ...]:
        if self.invalid is not None:
            return (self.invalid,)
        return tuple(
            f"{m.line()}: past the {_pct(m.bar, sign=False)} bar (the larger of the tolerance and the "
            f"noise bound, {_pct(m.bound, sign=False)})"
            for m in self.regressions
        )

    def summary_line(self) -> str:
        """One line for notes and reports: the verdict, the most telling metric, and the resolution."""
        if self.invalid is not None:
            return f"A/B invalid: {self.invalid}"
        shown = self.regressions or tuple(m for m in self.metrics if m.metric == "tpot_ms") or self.metrics
        head = shown[0].line() if shown else "no metric measured on both sides"
        detect, noise = self.detectable(), self.noise_bound()
        resolves = (
            f"; fails from {_pct(detect, sign=False)} (noise bound {_pct(noise, sign=False)})"
            if detect is not None and noise is not None
            else ""
        )
        dropped = f"; {len(self.dropped)} block(s) dropped" if self.dropped else ""
        return f"A/B {'regression' if self.regressions else 'pass'}: {head}{resolves}{dropped}"


def judge_blocks(
    blocks: Sequence[Block], tolerance: float = DEFAULT_TOLERANCE, comparisons: int = len(PAIRED_METRICS),
    alpha: float = SESSION_ALPHA,
) -> PairedVerdict:  # fmt: skip
    """The paired verdict of a case's blocks (see the module docstring)."""
    valid = [b for b in blocks if b.dropped is None]
    dropped = tuple(f"block {b.index + 1}: {b.dropped}" for b in blocks if b.dropped is not None)
    if len(valid) < MIN_BLOCKS:
        why = (
            f"only {len(valid)} of {len(blocks)} A/B blocks could be trusted (at least {MIN_BLOCKS} needed)"
            + (f"; {dropped[0]}" if dropped else "")
        )
        return PairedVerdict((), len(valid), dropped, invalid=why)
    metrics = []
    for metric in PAIRED_METRICS:
        logs = [x for x in (b.log_ratio(metric) for b in valid) if x is not None]
        if len(logs) >= MIN_BLOCKS:
            metrics.append(_judge_metric(metric, logs, tolerance, comparisons, alpha))
    if not metrics:
        return PairedVerdict((), len(valid), dropped, invalid="no metric was measured on both sides")
    return PairedVerdict(tuple(metrics), len(valid), dropped)


def _judge_metric(
    metric: str, logs: Sequence[float], tolerance: float, comparisons: int, alpha: float
) -> PairedMetric:
    n = len(logs)
    mean = sum(logs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / (n - 1))
    se = sd / math.sqrt(n)
    half = t_quantile(1 - (1 - CONFIDENCE) / 2, n - 1) * se
    bound = t_quantile(1 - alpha / max(comparisons, 1), n - 1) * se
    higher = metric in HIGHER_IS_BETTER
    worse = -mean if higher else mean
    tol_log = -math.log(1 - tolerance) if higher else math.log1p(tolerance)
    bar_log = max(tol_log, bound)

    def relative(log_change: float) -> float:
        return 1 - math.exp(-log_change) if higher else math.expm1(log_change)

    return PairedMetric(
        metric=metric,
        blocks=n,
        ratio=math.exp(mean),
        low=math.exp(mean - half),
        high=math.exp(mean + half),
        bar=relative(bar_log),
        bound=relative(bound),
        regressed=worse > bar_log,
    )


def _pct(value: float, *, sign: bool = True) -> str:
    return f"{value * 100:+.1f}%" if sign else f"{value * 100:.1f}%"


def fold(outcome: Outcome, verdict: PairedVerdict) -> Outcome:
    """The test's outcome with the A/B verdict in it: a regression fails it, too few blocks make it invalid.

    Budgets and an invalid measurement keep their word (invalid > fail-budget >
    fail-regression > pass). A missed budget also stands when too few blocks
    could be trusted: the candidate's own failed requests both miss the error
    budget and drop its blocks, and a run that fails its requests is a
    ``fail-budget`` naming them, A/B or not. The A/B line is always among the notes.
    """
    notes = (*outcome.notes, verdict.summary_line())
    if outcome.kind in ("invalid", "fail", "error", "skip"):
        return dataclasses.replace(outcome, notes=notes)
    if verdict.invalid is not None and outcome.kind == "fail-budget":
        return dataclasses.replace(outcome, notes=notes)
    if verdict.invalid is not None:
        return dataclasses.replace(outcome, kind="invalid", reasons=(verdict.invalid,), notes=notes)
    if not verdict.regressions:
        return dataclasses.replace(outcome, notes=notes)
    kind: OutcomeKind = "fail-budget" if outcome.kind == "fail-budget" else "fail-regression"
    reasons = (*outcome.reasons, *verdict.reasons())
    return dataclasses.replace(outcome, kind=kind, reasons=reasons, notes=notes)


def ab_info(
    verdict: PairedVerdict, blocks: Sequence[Block], sides: Mapping[str, object]
) -> dict[str, object]:
    """``extra_info["llm"]["ab"]``: both sides, every block's figures and ratios, and the verdict."""
    return {
        "verdict": "invalid" if verdict.invalid else ("regression" if verdict.regressions else "pass"),
        "line": verdict.summary_line(),
        "invalid": verdict.invalid,
        "valid_blocks": verdict.valid_blocks,
        "dropped": list(verdict.dropped),
        "detectable_change": verdict.detectable(),
        "noise_bound": verdict.noise_bound(),
        "sides": dict(sides),
        "metrics": [
            {
                "metric": m.metric,
                "blocks": m.blocks,
                "ratio": m.ratio,
                "ci_low": m.low,
                "ci_high": m.high,
                "confidence": CONFIDENCE,
                "bar": m.bar,
                "noise_bound": m.bound,
                "regressed": m.regressed,
            }
            for m in verdict.metrics
        ],
        "blocks": [
            {
                "index": b.index,
                "order": b.order,
                "baseline": dict(b.baseline),
                "candidate": dict(b.candidate),
                "ratios": {m: _ratio(b, m) for m in PAIRED_METRICS},
                "dropped": b.dropped,
                "started_s": b.started_s,
            }
            for b in blocks
        ],
    }


def _ratio(block: Block, metric: str) -> float | None:
    x = block.log_ratio(metric)
    return math.exp(x) if x is not None else None

"""The noise model: how far a case's figures move between unchanged runs, and when a change is real.

Requests inside one run are tight, but whole runs shift together: on a
2-core machine, unchanged llama-server sessions moved TPOT +9% to +22%
while requests inside each varied 1.08-1.14x (issue 14). A per-request test
across two single runs reads such a shift as a certain regression. So the
unit of comparison is the *run*: a case's figure is the median of its
per-request samples (pooled over ``--llm-repeat`` repeats), and

* **history** (2+ passing baseline runs): the candidate's figure is compared
  with the baseline runs' figures. ``sigma`` is their robust spread in logs
  (``stats.pairwise_spread``), pooled over every case of those runs and never
  below the case's own spread once it has 3+ runs; the prediction bound for
  an unchanged run is ``t(1 - alpha/m, dof) * sigma * sqrt(1 + pi/(2H))``
  around the median of H runs, widened when the candidate's own requests
  spread more than a typical run's did (its median is then less certain). A
  change fails when it is larger than both the tolerance and that bound.
  ``alpha/m`` is Bonferroni over the session's m comparisons (cases x
  metrics): the chance that an unchanged session fails anywhere stays below
  ``SESSION_ALPHA`` whatever the correlation between them, and the verdict of
  each test is known when it ends (Holm would need every test's p-value
  first; for an unchanged session the two are the same).
* **one baseline run**: the spread between runs is unknown, and the verdict
  says so. The bar is ``max(tolerance, ONE_RUN_FLOOR)``, and the change must
  also be outside a 95% interval: from the repeats when both runs have 2+
  (a t interval on repeat medians, the between-repeat spread pooled over
  the baseline's cases), else from the per-request samples (Hodges-Lehmann
  with the Mann-Whitney interval, ``shift_ci``) with the sample
  sizes cut to the independent ones: requests in flight together share their
  fate (``stats.effective_samples``), so 10 requests in 3 waves count as 3.

Capacity and a sweep's peak throughput are one number per run
(``compare_run_figures``): the candidate's figure against the baseline runs'
figures, with the same bound from their spread (own spread only, no pooling:
few cases have them), or ``ONE_RUN_FLOOR`` with one run; a change of one
search step is the search's resolution and never fails.

This module only computes: no files, no pytest.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist, median
from typing import Any, cast

from pytest_llmperf.measure.stats import effective_samples, pairwise_spread, t_quantile
from pytest_llmperf.records import HIGHER_IS_BETTER, Comparison, RunResult
from pytest_llmperf.schema import RUN_FIGURE_METRICS, SAMPLE_METRICS, request_samples, run_figures

SESSION_ALPHA = 0.05
"""Chance that an unchanged session fails anywhere, with a history (Bonferroni over its comparisons).

The acceptance target is at most 1 false alarm in 20 unchanged sessions.
Bonferroni is conservative when comparisons move together (TPOT, ITL, E2E
and per-request tok/s of one case nearly always do), so the realized rate is
below this; ``benchmarks/gate_quality.py`` measures it.
"""

ONE_RUN_FLOOR = 0.25
"""With one baseline run, a change must exceed 25% (or the tolerance, if larger) to fail.

One run cannot show how far unchanged runs move, so this is the measured
figure: unchanged llama-server sessions on the 2-core CI machine moved
TPOT/ITL +9% to +22% and E2E +9% to +15% (issue 14, 6 cases; FIELD-NOTES).
A quarter keeps those quiet; a history of passing runs replaces it with what
this machine shows. Over 40 minutes on the idle VM (``gate_quality.py
--part llama``, 25 unchanged sessions) a case's median moved up to 1.35x
(max/min), so one-run gating against an old run can still fail on drift:
keep a history, and compare runs close in time.
"""

CONFIDENCE = 0.95
"""The interval a one-run comparison must exclude no-change from."""

THIN_TO = 400
"""Larger samples are thinned to evenly spaced order statistics: keeps O(n*m) small, only widens the CI."""


Spread = tuple[float, int]
"""A robust spread in logs and its degrees of freedom (``stats.pairwise_spread``)."""


@dataclass(frozen=True)
class Correction:
    """Bonferroni over the session's ``comparisons`` (cases x metrics): each is tested at ``alpha/m``."""

    comparisons: int = len(SAMPLE_METRICS)
    alpha: float = SESSION_ALPHA

    def quantile(self, dof: int) -> float:
        """The t quantile a change must pass, with ``dof`` degrees of freedom (at least 1)."""
        return t_quantile(1 - self.alpha / max(self.comparisons, 1), max(dof, 1))


NO_CORRECTION = Correction()
"""One case alone: its own metrics are the comparisons."""


@dataclass(frozen=True)
class PooledSpreads:
    """Each metric's spread pooled over the session's other cases, where known.

    ``history`` between baseline runs (``history_spread``), ``repeats``
    between a run's repeats (``repeat_spread``); a metric absent from either
    counts only this case's own runs.
    """

    history: Mapping[str, Spread | None] = field(default_factory=dict)
    repeats: Mapping[str, Spread | None] = field(default_factory=dict)


NOT_POOLED = PooledSpreads()


@dataclass(frozen=True)
class Shift:
    """Hodges-Lehmann ratio current/baseline and its confidence interval (may be 0..inf)."""

    ratio: float
    low: float
    high: float
    n_baseline: int
    n_current: int


def _thin(values: list[float]) -> list[float]:
    if len(values) <= THIN_TO:
        return values
    step = len(values) / THIN_TO
    return [values[int((i + 0.5) * step)] for i in range(THIN_TO)]


def shift_ci(
    baseline: Sequence[float],
    current: Sequence[float],
    confidence: float = CONFIDENCE,
    *,
    waves: tuple[int, int] | None = None,
) -> Shift | None:
    """Ratio of ``current`` to ``baseline`` with a rank-based confidence interval.

    Works on logarithms, so the shift is multiplicative (a 10% slower server
    multiplies every latency by 1.1). The interval is ``[D(k), D(N+1-k)]`` of
    the N sorted pairwise differences with ``k = floor(N/2 - z*sqrt(N(n+m+1)/12))``;
    when k < 1 the samples are too small to bound it and it is ``(0, inf)``.
    ``waves`` are the independent samples on each side (``stats.effective_samples``):
    the rank statistic's spread is that of ``waves`` draws, so ``k`` is taken at
    the same fraction of N that ``waves`` samples would give. ``None`` when
    either side has no positive value.
    """
    logs_b = _thin(sorted(math.log(v) for v in baseline if v > 0))
    logs_c = _thin(sorted(math.log(v) for v in current if v > 0))
    n, m = len(logs_c), len(logs_b)
    if n == 0 or m == 0:
        return None
    diffs = sorted(c - b for c in logs_c for b in logs_b)
    total = n * m
    ne, me = (n, m) if waves is None else (min(max(waves[1], 1), n), min(max(waves[0], 1), m))
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    fraction = 0.5 - z * math.sqrt((ne + me + 1) / (12 * ne * me))
    k = math.floor(fraction * total + 1e-9)
    low, high = (math.exp(diffs[k - 1]), math.exp(diffs[total - k])) if k >= 1 else (0.0, math.inf)
    return Shift(math.exp(median(diffs)), low, high, m, n)


@dataclass(frozen=True)
class CaseRun:
    """One case measured in one session: its repeats' per-request samples and independent samples."""

    repeats: tuple[Mapping[str, Sequence[float]], ...]
    waves: int
    error_rate: float
    figures: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    """One number per run (capacity, peak throughput) and its search step: ``schema.run_figures``."""

    @classmethod
    def from_entries(cls, entries: Sequence[Mapping[str, Any]]) -> CaseRun:
        """From saved ``extra_info["llm"]`` entries, one per repeat."""
        waves = 0
        for llm in entries:
            e2e = [v for v in llm["samples"].get("e2e_ms", ()) if v > 0]
            duration = llm.get("duration_s")
            mid = median(e2e) / 1000 if e2e else None
            waves += effective_samples(len(e2e), float(duration) if duration else 0.0, mid)
        rate = sum(float(llm["error_rate"]) for llm in entries) / len(entries) if entries else 0.0
        figures = run_figures(entries[-1]) if entries else {}
        return cls(tuple(llm["samples"] for llm in entries), waves, rate, figures)

    @classmethod
    def from_results(cls, results: Sequence[RunResult]) -> CaseRun:
        """From this session's measured repeats of the case."""
        waves = 0
        repeats: list[Mapping[str, Sequence[float]]] = []
        for result in results:
            samples = request_samples(result)
            repeats.append(cast(Mapping[str, Sequence[float]], samples))
            e2e = [v for v in samples["e2e_ms"] if v > 0]
            mid = median(e2e) / 1000 if e2e else None
            waves += effective_samples(len(e2e), result.summary.duration_s, mid)
        rate = sum(r.summary.error_rate for r in results) / len(results) if results else 0.0
        figures = run_figures(results[-1].extra) if results else {}
        return cls(tuple(repeats), waves, rate, figures)

    def samples(self, metric: str) -> list[float]:
        return [v for rep in self.repeats for v in rep.get(metric, ()) if v > 0]

    def figure(self, metric: str) -> float | None:
        """The run-level figure: the median of every request's value, pooled over repeats."""
        values = self.samples(metric)
        return median(values) if values else None

    def figure_se(self, metric: str) -> float:
        """Standard error of ``log(figure)`` from this run's own spread: waves, not requests, are samples.

        ``1.2533 * sigma / sqrt(waves)`` (the median's standard error), with
        ``sigma`` the robust sd (1.4826 MAD) of the requests' logs; 0 for one value.
        """
        logs = [math.log(v) for v in self.samples(metric)]
        if len(logs) < 2:
            return 0.0
        center = median(logs)
        sigma = 1.4826 * median(abs(v - center) for v in logs)
        return 1.2533 * sigma / math.sqrt(max(min(self.waves, len(logs)), 1))

    def repeat_logs(self, metric: str) -> list[float]:
        """log of each repeat's median (repeats without the metric are left out)."""
        return [
            math.log(median(v)) for rep in self.repeats if (v := [x for x in rep.get(metric, ()) if x > 0])
        ]


def history_spread(cases: Iterable[Sequence[CaseRun]], metric: str) -> Spread | None:
    """Robust sd of log run figures between runs, pooled over cases, and its degrees of freedom."""
    groups = []
    for runs in cases:
        figures = [f for run in runs if (f := run.figure(metric)) is not None]
        groups.append([math.log(f) for f in figures])
    return pairwise_spread(groups)


def repeat_spread(case_runs: Iterable[CaseRun], metric: str) -> Spread | None:
    """Robust sd of log repeat medians inside runs, pooled over the runs given."""
    return pairwise_spread(run.repeat_logs(metric) for run in case_runs)


def _worse(metric: str, log_change: float) -> float:
    """The log change turned so that positive is worse (slower, or fewer tokens per second)."""
    return -log_change if metric in HIGHER_IS_BETTER else log_change


def _signed(metric: str, worse: float) -> float:
    """A "worse by" log amount back to a relative change in the metric's own direction."""
    return math.exp(-worse if metric in HIGHER_IS_BETTER else worse) - 1


def _bar(metric: str, tolerance: float, bound_log: float) -> tuple[float, float]:
    """(log bar, relative bar): the worse-direction change that fails."""
    if metric in HIGHER_IS_BETTER:
        tol_log = -math.log(1 - tolerance) if tolerance < 1 else math.inf
    else:
        tol_log = math.log1p(tolerance)
    bar_log = max(tol_log, bound_log)
    return bar_log, _signed(metric, bar_log)


def compare_history(
    metric: str,
    history: Sequence[CaseRun],
    current: CaseRun,
    tolerance: float,
    pooled: Spread | None,
    *,
    correction: Correction,
) -> Comparison | None:
    """The candidate's run figure against 2+ baseline runs' figures (see the module docstring)."""
    figures = [f for run in history if (f := run.figure(metric)) is not None]
    now = current.figure(metric)
    if now is None or len(figures) < 2:
        return None
    logs = [math.log(f) for f in figures]
    center = median(logs)
    own = pairwise_spread([logs])
    assert own is not None  # two or more figures
    sigma, dof = own if pooled is None else pooled
    if len(logs) >= 3 and own[0] > sigma:
        # A case noisier than the session's others keeps its own spread (the pooled
        # degrees of freedom still apply: this guards, it does not replace).
        sigma = own[0]
    q = correction.quantile(dof)
    # sigma already holds a typical run's own sampling error; a candidate that is noisier inside
    # (a few slow waves) adds the excess, so its median is not read as more certain than it is.
    typical = sum(run.figure_se(metric) ** 2 for run in history) / len(history)
    excess = max(current.figure_se(metric) ** 2 - typical, 0.0)
    bound = q * math.sqrt(sigma**2 * (1 + math.pi / (2 * len(logs))) + excess)
    bar_log, bar = _bar(metric, tolerance, bound)
    diff = math.log(now) - center
    return Comparison(
        metric, math.exp(center), now, math.expm1(diff), math.expm1(diff - bound), math.expm1(diff + bound),
        tolerance, sum(len(run.samples(metric)) for run in history), len(current.samples(metric)),
        _worse(metric, diff) > bar_log, method="history", bar=bar, spread=math.expm1(sigma), runs=len(logs),
    )  # fmt: skip


def compare_repeats(
    metric: str,
    baseline: CaseRun,
    current: CaseRun,
    tolerance: float,
    pooled: Spread | None,
) -> Comparison | None:
    """One baseline run, both with 2+ repeats: a t interval on the repeats' log medians."""
    base, now = baseline.repeat_logs(metric), current.repeat_logs(metric)
    if len(base) < 2 or len(now) < 2:
        return None
    own = pairwise_spread([base, now])
    if own is None:
        return None
    sigma, dof = own
    if pooled is not None and pooled[0] > sigma:
        sigma, dof = pooled
    diff = sum(now) / len(now) - sum(base) / len(base)
    half = t_quantile(0.5 + CONFIDENCE / 2, dof) * sigma * math.sqrt(1 / len(base) + 1 / len(now))
    worse = _worse(metric, diff)
    bar_log, bar = _bar(metric, tolerance, math.log1p(ONE_RUN_FLOOR))
    low, high = sorted((math.expm1(diff - half), math.expm1(diff + half)))
    b_fig, c_fig = baseline.figure(metric), current.figure(metric)
    assert b_fig is not None
    assert c_fig is not None
    return Comparison(
        metric, b_fig, c_fig, math.expm1(diff), low, high, tolerance, len(base), len(now),
        worse > bar_log and worse - half > 0, method="repeats", bar=bar, spread=math.expm1(sigma),
    )  # fmt: skip


def compare_samples(
    metric: str,
    baseline: CaseRun,
    current: CaseRun,
    tolerance: float,
) -> Comparison | None:
    """One baseline run: per-request samples, with the interval cut to the independent samples."""
    base, now = baseline.samples(metric), current.samples(metric)
    shift = shift_ci(base, now, CONFIDENCE, waves=(baseline.waves or len(base), current.waves or len(now)))
    if shift is None:
        return None
    change, low, high = shift.ratio - 1, shift.low - 1, shift.high - 1
    bar_log, bar = _bar(metric, tolerance, math.log1p(ONE_RUN_FLOOR))
    worse = _worse(metric, math.log(shift.ratio))
    significant = high < 0 if metric in HIGHER_IS_BETTER else low > 0
    return Comparison(
        metric, median(base), median(now), change, low, high, tolerance, shift.n_baseline, shift.n_current,
        worse > bar_log and significant, method="samples", bar=bar,
        waves=(min(baseline.waves, len(base)), min(current.waves, len(now))),
    )  # fmt: skip


def compare_error_rate(baseline_rate: float, current_rate: float, tolerance: float) -> Comparison:
    """Error rate: an absolute difference of fractions, no noise model (errors are not jitter)."""
    diff = current_rate - baseline_rate
    return Comparison(
        "error_rate", baseline_rate, current_rate, diff, diff, diff, tolerance, 0, 0, diff > tolerance,
        method="absolute",
    )  # fmt: skip


def sample_size_notes(comparisons: Sequence[Comparison]) -> tuple[str, ...]:
    """Where this case's data cannot resolve its tolerance, one line saying so and what would."""
    coarse: list[str] = []
    noisy: list[str] = []
    for c in comparisons:
        if c.method == "samples":
            half = (c.high - c.low) / 2 if math.isfinite(c.high) and c.low > -1 else math.inf
            if half > c.tolerance:
                width = "unbounded" if math.isinf(half) else f"+-{half:.0%}"
                coarse.append(f"{c.metric} {width}")
        elif c.method == "history" and c.bar is not None and abs(c.bar) > c.tolerance + 1e-9:
            noisy.append(f"{c.metric} {c.bar:+.0%}")
    notes = []
    if coarse:
        waves = next((c.waves for c in comparisons if c.waves is not None), None)
        size = f" ({waves[0]}/{waves[1]} independent samples)" if waves else ""
        notes.append(
            "sample too small for the tolerance" + size + ": 95% CI " + ", ".join(coarse)
            + "; send more requests (--llm-adaptive stops at half the tolerance), use --llm-repeat, "
            "or keep a history of passing runs (--benchmark-autosave)"
        )  # fmt: skip
    if noisy:
        notes.append(
            "unchanged runs on this machine vary more than the tolerance, so a change must exceed: "
            + ", ".join(noisy)
        )
    return tuple(notes)


def compare_case(
    history: Sequence[CaseRun],
    current: CaseRun,
    tolerances: Any,
    *,
    pooled: PooledSpreads = NOT_POOLED,
    correction: Correction = NO_CORRECTION,
    samples: bool = True,
) -> tuple[Comparison, ...]:
    """Every comparable metric of one case against its baseline run(s), newest run first.

    ``tolerances`` is a ``verdict.Tolerances``; ``pooled`` holds each
    metric's spread over the session's other cases; without it only this
    case's own runs count. ``correction`` is the session's Bonferroni.
    ``samples=False`` compares only the run figures and the error rate (a
    capacity search: its per-request figures are of a load that moves).
    """
    found: list[Comparison] = []
    for metric in SAMPLE_METRICS if samples else ():
        tol = tolerances.of(metric)
        cmp: Comparison | None
        if len(history) >= 2:
            spread = pooled.history.get(metric) or history_spread([history], metric)
            cmp = compare_history(metric, history, current, tol, spread, correction=correction)
        else:
            cmp = compare_repeats(metric, history[0], current, tol, pooled.repeats.get(metric))
            if cmp is None:
                cmp = compare_samples(metric, history[0], current, tol)
        if cmp is not None:
            found.append(cmp)
    found.extend(compare_run_figures(history, current, tolerances, correction))
    found.append(compare_error_rate(history[0].error_rate, current.error_rate, tolerances.error_rate))
    return tuple(found)


def compare_run_figures(
    history: Sequence[CaseRun],
    current: CaseRun,
    tolerances: Any,
    correction: Correction,
) -> list[Comparison]:
    """Capacity and peak throughput of the candidate against the baseline runs' (higher is better).

    With 2+ runs the bar is the larger of the tolerance and the prediction
    bound from the runs' own spread (as ``compare_history``); with one, the
    larger of the tolerance and ``ONE_RUN_FLOOR``. A drop of at most one
    search step never fails: it is the search's resolution.
    """
    found = []
    for metric in RUN_FIGURE_METRICS:
        now = current.figures.get(metric)
        past = [
            run.figures[metric] for run in history if metric in run.figures and run.figures[metric][0] > 0
        ]
        if now is None or now[0] <= 0 or not past:
            continue
        logs = [math.log(value) for value, _ in past]
        center = median(logs)
        own = pairwise_spread([logs]) if len(logs) >= 2 else None
        if own is not None:
            sigma, dof = own
            bound = correction.quantile(dof) * sigma * math.sqrt(1 + math.pi / (2 * len(logs)))
        else:
            sigma, bound = None, math.log1p(ONE_RUN_FLOOR)
        bar_log, bar = _bar(metric, tolerances.of(metric), bound)
        diff = math.log(now[0]) - center
        step = max(now[1], *(s for _, s in past))
        drop = math.exp(center) - now[0]
        found.append(
            Comparison(
                metric, math.exp(center), now[0], math.expm1(diff), math.expm1(diff - bound),
                math.expm1(diff + bound), tolerances.of(metric), len(logs), 1,
                _worse(metric, diff) > bar_log and drop > step + 1e-9, method="figure", bar=bar,
                spread=math.expm1(sigma) if sigma is not None else None, runs=len(logs),
            )
        )  # fmt: skip
    return found

"""Verdicts: a run's summary, budgets and baseline in, one ``Outcome`` out.

Precedence: an invalid measurement (from the run, a busy machine, or a
baseline refused for other hardware) beats a missed budget, which beats a
regression, which beats a pass. Every failing reason is one line naming the
metric, the observed value and the limit or the baseline.

Regression is noise-aware (``noise`` has the model): with a history of 2+
passing baseline runs a metric regresses when its run-level change is larger
than both its tolerance and what unchanged runs on this machine have shown;
with one baseline run, when it is larger than both the tolerance and
``noise.ONE_RUN_FLOOR`` and outside a 95% interval of the run's own
samples or repeats. Each comparison says which it was. Tails are for budgets
(``*_p99``): a rank comparison of 16 requests cannot say anything about
their p99. A case measured on a busy machine (``busy``) is invalid and is
not compared at all.

This module must not read files or know about pytest; it only computes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from statistics import median
from typing import Any

from pytest_llmperf.errors import ConfigError
from pytest_llmperf.judge.budgets import Budgets
from pytest_llmperf.judge.busy import busy_reasons, is_busy
from pytest_llmperf.judge.noise import (
    ONE_RUN_FLOOR,
    SESSION_ALPHA,
    CaseRun,
    Correction,
    PooledSpreads,
    Shift,
    compare_case,
    sample_size_notes,
    shift_ci,
)
from pytest_llmperf.measure.stats import adaptive_target_rel_ci
from pytest_llmperf.records import HIGHER_IS_BETTER, Comparison, HardwareMode, Outcome, RunResult
from pytest_llmperf.schema import SAMPLE_METRICS, plan_of, run_figures

__all__ = ["Shift", "shift_ci"]  # re-exported: they lived here before the noise model had a module

ONE_RUN_NOTE = (
    f"one baseline run: the spread between runs is unknown, so a change must exceed {ONE_RUN_FLOOR:.0%} "
    "(or its tolerance) to fail; keep a history of passing runs (--benchmark-autosave with bare "
    "--benchmark-compare) to gate on what unchanged runs here show"
)


@dataclass(frozen=True)
class Tolerances:
    """How much worse than the baseline a metric may get before it is a regression.

    Relative fractions of the baseline (0.05 = 5%), except ``error_rate``,
    which is an absolute difference of fractions. Defaults: 5% for the decode
    figures (TPOT, ITL, E2E, per-request tok/s) because that is the precision
    adaptive stopping aims for (95% CI within 5%), so a 10% slowdown is twice
    the tolerance; 10% for TTFT, which also carries slot queueing and prefill
    batching that shift between identical runs (on this project's CPU machine,
    c=4 TTFT ranged 1.3-1.7 s on an idle box); one error in a hundred requests.
    """

    ttft_ms: float = 0.10
    tpot_ms: float = 0.05
    itl_ms: float = 0.05
    e2e_ms: float = 0.05
    output_tok_per_s: float = 0.05
    error_rate: float = 0.01
    capacity: float = 0.10
    """Capacity (concurrency and rate) found by ``llm_perf.capacity``: one number per run."""

    def of(self, metric: str) -> float:
        value: float = getattr(self, _FIGURE_TOLERANCES.get(metric, metric))
        return value

    @property
    def adaptive_target_rel_ci(self) -> float:
        """The CI half-width ``--llm-adaptive`` should stop at: half the tightest decode tolerance."""
        return adaptive_target_rel_ci(min(self.tpot_ms, self.output_tok_per_s))


_FIGURE_TOLERANCES = {
    "capacity_concurrency": "capacity",
    "capacity_rate": "capacity",
    "peak_output_tok_per_s": "output_tok_per_s",
}
DEFAULT_TOLERANCES = Tolerances()
_TOLERANCE_KEYS = tuple(f.name for f in dataclasses.fields(Tolerances))


def _tolerance_key(key: str) -> str:
    # The comparison is of medians, so ``tpot_ms_p50`` names the same tolerance as ``tpot_ms``.
    name = key.strip().removesuffix("_p50")
    if name not in _TOLERANCE_KEYS:
        valid = ", ".join(k if k == "error_rate" else f"{k}[_p50]" for k in _TOLERANCE_KEYS)
        raise ConfigError(f"unknown tolerance key {key!r}; valid keys are {valid}; type e.g. tpot_ms=5")
    return name


def _tolerance_value(key: str, value: object) -> float:
    text = str(value).strip().removesuffix("%")
    try:
        percent = float(text)
    except ValueError:
        percent = math.nan
    if isinstance(value, bool) or not math.isfinite(percent) or percent < 0:
        raise ConfigError(f"tolerance {key} is a percentage >= 0, got {value!r}; type e.g. {key}=5")
    return percent / 100


def parse_tolerances(
    items: Mapping[str, object] | Sequence[str], base: Tolerances = DEFAULT_TOLERANCES
) -> Tolerances:
    """Override tolerances, given in percent, from a table or ``KEY=PERCENT`` strings.

    ``{"tpot_ms": 3}``, ``["tpot_ms_p50=3%"]`` and ``{"error_rate": "2"}`` (two
    percentage points) are all accepted; unnamed metrics keep ``base``.
    """
    pairs: list[tuple[str, object]] = []
    if isinstance(items, Mapping):
        pairs = list(items.items())
    else:
        for item in items:
            key, sep, raw = item.partition("=")
            if not sep:
                raise ConfigError(f"tolerance {item!r} needs METRIC=PERCENT; type e.g. tpot_ms=5")
            pairs.append((key, raw))
    changes = {_tolerance_key(key): _tolerance_value(key.strip(), value) for key, value in pairs}
    return dataclasses.replace(base, **changes)


def compare_samples(
    metric: str,
    baseline: Sequence[float],
    current: Sequence[float],
    tolerance: float,
    confidence: float = 0.95,
) -> Comparison | None:
    """Per-request samples of two runs, every request independent: the classic rank comparison.

    Regressed when the Hodges-Lehmann change is worse than ``tolerance`` and
    the interval excludes no change. The gate itself goes through
    ``noise.compare_case``, which knows about waves, repeats and history;
    this stays for callers that hold two plain samples.
    """
    shift = shift_ci(baseline, current, confidence)
    if shift is None:
        return None
    change, low, high = shift.ratio - 1, shift.low - 1, shift.high - 1
    if metric in HIGHER_IS_BETTER:
        regressed = change < -tolerance and high < 0
    else:
        regressed = change > tolerance and low > 0
    return Comparison(
        metric, median(baseline), median(current), change, low, high, tolerance,
        shift.n_baseline, shift.n_current, regressed,
    )  # fmt: skip


@dataclass(frozen=True)
class Evidence:
    """What one case is compared with: its baseline runs, newest first, and the session's context.

    One run means the spread between runs is unknown. ``pooled_history`` and
    ``pooled_repeats`` map a metric to its spread pooled over the other cases
    (``noise.history_spread``, ``noise.repeat_spread``); ``comparisons`` is
    the session's number of (case x metric) comparisons, for Bonferroni;
    ``notes`` are lines about how the history was chosen.
    """

    runs: tuple[CaseRun, ...]
    newest: Mapping[str, Any]
    pooled_history: Mapping[str, tuple[float, int] | None] = field(default_factory=dict)
    pooled_repeats: Mapping[str, tuple[float, int] | None] = field(default_factory=dict)
    comparisons: int = len(SAMPLE_METRICS)
    notes: tuple[str, ...] = ()

    @classmethod
    def single(cls, llm: Mapping[str, Any], comparisons: int = len(SAMPLE_METRICS)) -> Evidence:
        """One baseline entry (``extra_info["llm"]``): what ``--benchmark-compare=N`` names."""
        return cls((CaseRun.from_entries([llm]),), llm, comparisons=comparisons)


@dataclass(frozen=True)
class HardwareCheck:
    """Differences between the baseline's setup and this run's, and what to do about them."""

    differences: tuple[str, ...]
    mode: HardwareMode

    @property
    def fatal(self) -> bool:
        return self.mode == "fail" and bool(self.differences)

    @property
    def message(self) -> str | None:
        if not self.differences or self.mode == "ignore":
            return None
        return "baseline ran on a different setup: " + "; ".join(self.differences)


_MACHINE_FIELDS = ("gpu_name", "gpu_count", "gpu_driver")
_SERVER_FIELDS = ("backend", "engine", "engine_version", "model_id", "model_revision")


def _field_diffs(
    old: Mapping[str, Any], new: Mapping[str, Any], keys: Sequence[str], prefix: str
) -> list[str]:
    # A key absent on either side is unknown, not different: older runs and
    # partial telemetry must not look like a hardware change.
    return [
        f"{prefix}{key} {old[key]!r} -> {new[key]!r}"
        for key in keys
        if key in old and key in new and old[key] != new[key]
    ]


def check_hardware(
    baseline_machine_info: Mapping[str, Any],
    current_machine_info: Mapping[str, Any],
    model: str,
    mode: HardwareMode = "warn",
) -> HardwareCheck:
    """Compare ``machine_info["llmperf"]`` of both runs for one model.

    Reads ``gpu_name``, ``gpu_count``, ``gpu_driver`` (on runs without a GPU,
    ``host.cpu_model`` and ``host.cpu_count_logical``, or pytest-benchmark's
    ``cpu.brand_raw`` and ``cpu.count`` where ``host`` is absent), then the
    model's entry in ``servers`` (backend, engine, engine_version, model_id,
    model_revision). Pass both whole
    machine_info dicts. A field is compared only where both runs recorded it;
    a whole ``llmperf`` section missing on one side is reported.
    """
    old = baseline_machine_info.get("llmperf")
    new = current_machine_info.get("llmperf")
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        if isinstance(old, Mapping) is isinstance(new, Mapping):
            return HardwareCheck((), mode)
        side = "baseline" if not isinstance(old, Mapping) else "this run"
        return HardwareCheck((f"{side} has no machine_info.llmperf, so its hardware is unknown",), mode)
    diffs = _field_diffs(old, new, _MACHINE_FIELDS, "")
    if not old.get("gpu_count") and not new.get("gpu_count"):
        # Without a GPU the CPU does the work, and hosted CI runners change CPU
        # model between runs: compare our host record, else pytest-benchmark's.
        host_old, host_new = old.get("host") or {}, new.get("host") or {}
        if "cpu_model" in host_old and "cpu_model" in host_new:
            diffs += _field_diffs(host_old, host_new, ("cpu_model", "cpu_count_logical"), "host ")
        else:
            cpu_old = baseline_machine_info.get("cpu") or {}
            cpu_new = current_machine_info.get("cpu") or {}
            diffs += _field_diffs(cpu_old, cpu_new, ("brand_raw", "count"), "cpu ")
    old_srv = (old.get("servers") or {}).get(model) or {}
    new_srv = (new.get("servers") or {}).get(model) or {}
    diffs += _field_diffs(old_srv, new_srv, _SERVER_FIELDS, f"{model} ")
    return HardwareCheck(tuple(diffs), mode)


def scenario_mismatch(baseline_llm: Mapping[str, Any], result: RunResult) -> str | None:
    """Why a baseline entry measured something else than this run, or ``None``."""
    now: dict[str, Any] = {
        "model": result.model,
        "backend": result.backend,
        "input_tokens": result.scenario.input_tokens,
        "output_tokens": result.scenario.output_tokens,
        "concurrency": result.scenario.concurrency,
        **{k: v for k, v in result.extra.items() if k in ("traffic", "sweep", "capacity")},
    }
    return entry_mismatch(baseline_llm, now)


def entry_mismatch(baseline_llm: Mapping[str, Any], current_llm: Mapping[str, Any]) -> str | None:
    """Why two entries (``extra_info["llm"]``) measured different things, or ``None``.

    Beyond the scenario, the traffic, a sweep's loads and a capacity search's
    bounds and budget must match (``schema.plan_of``); a capacity entry's
    concurrency is its answer, not its scenario, so it may differ.
    """
    keys = ["model", "backend", "input_tokens", "output_tokens", "concurrency"]
    plan_now, plan_then = plan_of(current_llm), plan_of(baseline_llm)
    if "capacity" in plan_now:
        keys.remove("concurrency")
    diffs = [
        f"{k} {baseline_llm.get(k)!r} -> {current_llm.get(k)!r}"
        for k in keys
        if baseline_llm.get(k) != current_llm.get(k)
    ]
    diffs += [f"{k} {plan_then.get(k)!r} -> {plan_now.get(k)!r}" for k in sorted({*plan_now, *plan_then})
              if plan_now.get(k) != plan_then.get(k)]  # fmt: skip
    return "baseline measured another case, not compared: " + "; ".join(diffs) if diffs else None


@dataclass(frozen=True)
class Rules:
    """How the session judges each case, the same for every test.

    ``tolerances`` are the regressions allowed against a baseline; ``busy``
    is what a busy machine does: ``fail`` (invalid), ``warn`` (a note) or
    ``ignore``; ``confidence`` is the interval a regression's reason states;
    ``alpha`` the chance that an unchanged session fails anywhere
    (Bonferroni over the session's comparisons, ``noise.Correction``).
    """

    tolerances: Tolerances = DEFAULT_TOLERANCES
    busy: HardwareMode = "fail"
    confidence: float = 0.95
    alpha: float = SESSION_ALPHA


DEFAULT_RULES = Rules()


def judge(
    result: RunResult,
    budgets: Budgets | None = None,
    baseline: Mapping[str, Any] | Evidence | None = None,
    *,
    rules: Rules = DEFAULT_RULES,
    hardware: HardwareCheck | None = None,
    current: CaseRun | None = None,
) -> Outcome:
    """Decide one test: invalid > fail-budget > fail-regression > pass.

    ``baseline`` is the baseline entry's ``extra_info["llm"]`` for this test
    (``Baseline.llm(fullname)``), or the ``Evidence`` of several runs, or
    ``None`` when there is none to compare. ``current`` is this case's
    measurement pooled over its repeats (default: ``result`` alone).
    """
    notes: list[str] = []
    busy_now = busy_reasons(_telemetry(result)) if rules.busy != "ignore" else ()
    # A busy machine first: it is usually why the client fell behind too.
    invalid = [*busy_now, *result.invalid] if rules.busy == "fail" else list(result.invalid)
    if rules.busy == "warn":
        notes.extend(busy_now)
    if hardware is not None and hardware.message is not None:
        (invalid if hardware.fatal else notes).append(hardware.message)
    figures = (
        {k: v for k, (v, _) in run_figures(result.extra).items()} if "capacity" in result.extra else None
    )
    budget_reasons = budgets.violations(result.summary, figures) if budgets is not None else ()
    evidence = Evidence.single(baseline) if isinstance(baseline, Mapping) else baseline
    gated = not (hardware is not None and hardware.fatal)
    if rules.busy == "fail" and busy_now:
        gated = False  # a busy run is never compared: its figures measured the other load
    comparisons: tuple[Comparison, ...] = ()
    if evidence is not None and gated:
        comparisons = _compare(result, evidence, current, rules, notes)
    regressions = tuple(c.reason(rules.confidence) for c in comparisons if c.regressed)
    if invalid:
        return Outcome("invalid", tuple(invalid), tuple(notes), comparisons)
    if budget_reasons:
        return Outcome("fail-budget", budget_reasons, tuple(notes), comparisons)
    if regressions:
        return Outcome("fail-regression", regressions, tuple(notes), comparisons)
    return Outcome("pass", (), tuple(notes), comparisons)


def _compare(
    result: RunResult, evidence: Evidence, current: CaseRun | None, rules: Rules, notes: list[str]
) -> tuple[Comparison, ...]:
    """This case against its evidence, or nothing where it cannot be; why goes into ``notes``."""
    notes.extend(evidence.notes)
    mismatch = scenario_mismatch(evidence.newest, result)
    if mismatch is not None:
        notes.append(mismatch)
        return ()
    if rules.busy != "ignore" and len(evidence.runs) == 1 and is_busy(evidence.newest):
        notes.append("baseline entry was measured on a busy machine, so it is not compared")
        return ()
    comparisons = compare_case(
        evidence.runs,
        current if current is not None else CaseRun.from_results([result]),
        rules.tolerances,
        pooled=PooledSpreads(evidence.pooled_history, evidence.pooled_repeats),
        correction=Correction(evidence.comparisons, rules.alpha),
        # A capacity test's per-request figures are of its answer's load, which moves between
        # runs: only the capacity itself (and errors) are compared.
        samples="capacity" not in result.extra,
    )
    if len(evidence.runs) == 1 and any(c.method != "absolute" for c in comparisons):
        notes.append(ONE_RUN_NOTE)
    notes.extend(sample_size_notes(comparisons))
    return comparisons


def _telemetry(result: RunResult) -> Mapping[str, Any] | None:
    telemetry = result.extra.get("telemetry")
    return telemetry if isinstance(telemetry, Mapping) else None

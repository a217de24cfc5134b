"""The ``extra_info["llm"]`` and ``machine_info["llmperf"]`` layouts: one owner, read and written.

pytest-benchmark stores whatever a test puts in ``extra_info``; ours is a
public contract (the README's "JSON contract"): keys are added, never
renamed, and ``schema`` says which layout a file holds. The writer
(``output.benchjson``) builds entries with :func:`llm_info`, and the
baseline reader (``judge.baseline``) checks them against
:data:`REQUIRED_LLM_KEYS` and :data:`READABLE_SCHEMAS`, so the two cannot
drift apart.

Schema history: 1 had ``engine`` holding the engine *version*; 2 names the
engine label ``engine`` (``llama.cpp``) and its version ``engine_version``.
:func:`engine_version_of` reads either. Schema 2 later gained, as added
keys: ``case``/``repeat``/``repeats`` and ``repeat_spread`` (``--llm-repeat``),
the document-level :data:`RUN_MARK_KEY` that says whether the session
that saved it passed (:func:`run_mark`, :func:`run_passed`), goodput
(``slo``, ``good_requests``, ``slo_attainment``, ``goodput_rps``,
``goodput_tok_per_s``), ``traffic`` (a run's workload, when it is not fixed
lengths of fresh prompts), ``sweep`` (every point of ``llm_perf.sweep``, and
its knee) and ``capacity`` (``llm_perf.capacity``'s search and answer).
:func:`run_figures` reads the one-number-per-run figures of the last two
(capacity, peak throughput), which the gate compares run against run.

This module only shapes values: no I/O, and nothing from the stages but
the records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from pytest_llmperf.records import Distribution, Outcome, RunResult

SCHEMA = 2
"""Version of ``extra_info["llm"]`` this package writes."""
READABLE_SCHEMAS = (1, 2)
"""Versions a baseline may carry and still be compared."""

SAMPLE_METRICS: tuple[str, ...] = ("ttft_ms", "tpot_ms", "e2e_ms", "itl_ms", "output_tok_per_s")
DIST_METRICS: tuple[str, ...] = ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms")
DIST_STATS: tuple[str, ...] = ("p50", "p90", "p95", "p99", "mean", "min", "max", "stddev")
REQUIRED_LLM_KEYS: tuple[str, ...] = (
    "model",
    "backend",
    "input_tokens",
    "output_tokens",
    "concurrency",
    "requests",
    *DIST_METRICS,
    "output_tok_per_s",
    "total_tok_per_s",
    "request_per_s",
    "error_rate",
    "samples",
    "schema",
)

DistJson = dict[str, float]


class LlmSamples(TypedDict):
    """``extra_info["llm"]["samples"]``: one value per measured, successful request."""

    ttft_ms: list[float]
    tpot_ms: list[float]
    e2e_ms: list[float]
    itl_ms: list[float]
    output_tok_per_s: list[float]


class LlmInfo(TypedDict, total=False):
    """``extra_info["llm"]`` of one test (the README documents every key)."""

    schema: int
    model: str
    backend: str
    engine: str
    engine_version: str | None
    input_tokens: int
    output_tokens: int
    concurrency: int
    requests: int
    rate: float | None
    ttft_ms: DistJson | None
    itl_ms: DistJson | None
    tpot_ms: DistJson | None
    e2e_ms: DistJson | None
    queue_ms: DistJson | None
    output_tok_per_s: float | None
    total_tok_per_s: float | None
    request_per_s: float | None
    error_rate: float
    errors: int
    completed: int
    output_length_misses: int
    input_tokens_mean: float | None
    output_tokens_mean: float | None
    duration_s: float
    outcome: str
    reasons: list[str]
    notes: list[str]
    invalid: list[str]
    loop_lag_ms: DistJson | None
    samples: LlmSamples
    telemetry: object
    prompt_salt: str
    case: str
    repeat: int
    repeats: int
    repeat_spread: dict[str, RepeatSpread]
    slo: dict[str, float]
    good_requests: int | None
    slo_attainment: float | None
    goodput_rps: float | None
    goodput_tok_per_s: float | None
    traffic: dict[str, Any]
    sweep: dict[str, Any]
    capacity: dict[str, Any]
    duration: dict[str, Any]
    ab: dict[str, Any]
    """A/B sessions: both sides, every block and the paired verdict (``judge.paired.ab_info``)."""


class RepeatSpread(TypedDict):
    """``extra_info["llm"]["repeat_spread"][<metric>]`` on a case's last repeat.

    ``medians`` is each repeat's median in the session's order; ``spread_pct``
    the robust relative sd between them (``stats.pairwise_spread`` of their
    logs), ``None`` below two repeats.
    """

    medians: list[float]
    spread_pct: float | None


RUN_MARK_KEY = "llmperf"
"""Top-level key of a saved pytest-benchmark document: how the session that saved it ended."""


class RunMark(TypedDict):
    """``document["llmperf"]``: whether this run may be a baseline.

    ``passed`` is pytest's verdict on the whole session (no test failed or
    errored, none of ours was invalid, not interrupted); the counts say why not.
    """

    schema: int
    passed: bool
    failed: int
    errors: int
    invalid: int
    interrupted: bool


def run_mark(*, failed: int, errors: int, invalid: int, interrupted: bool) -> RunMark:
    """The mark a session writes into its saved JSON."""
    passed = not (failed or errors or invalid or interrupted)
    return RunMark(
        schema=1, passed=passed, failed=failed, errors=errors, invalid=invalid, interrupted=interrupted
    )


def run_passed(document: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether a saved run passed, and if not, why (one phrase).

    Runs saved before the mark existed count as passed when every
    ``llm_perf`` entry recorded ``outcome: pass``; what else pytest thought of
    that session is unknown.
    """
    mark = document.get(RUN_MARK_KEY)
    if isinstance(mark, Mapping) and isinstance(mark.get("passed"), bool):
        if mark["passed"]:
            return True, ""
        parts = [
            f"{mark.get(key)} {label}"
            for key, label in (("failed", "failed"), ("errors", "errored"), ("invalid", "invalid"))
            if mark.get(key)
        ]
        if mark.get("interrupted"):
            parts.append("interrupted")
        return False, "that session did not pass (" + (", ".join(parts) or "failed") + ")"
    outcomes = [
        bench["extra_info"]["llm"].get("outcome", "pass")
        for bench in document.get("benchmarks") or ()
        if isinstance(bench, Mapping) and isinstance(bench.get("extra_info"), Mapping)
        and isinstance(bench["extra_info"].get("llm"), Mapping)
    ]  # fmt: skip
    bad = [o for o in outcomes if o != "pass"]
    if bad:
        return False, f"{len(bad)} of its {len(outcomes)} tests did not pass ({', '.join(sorted(set(bad)))})"
    return True, ""


def case_key(llm: Mapping[str, Any], fullname: str) -> str:
    """The case an entry measured: ``case`` for one of several repeats, else the test's ``fullname``."""
    case = llm.get("case")
    return case if isinstance(case, str) and case else fullname


class ServerInfo(TypedDict, total=False):
    """``machine_info["llmperf"]["servers"][<model>]``: what served one model."""

    backend: str
    engine: str
    engine_version: str | None
    model_id: str | None
    model_revision: str | None


class LlmMachineInfo(TypedDict, total=False):
    """``machine_info["llmperf"]``: the fields a hardware-aware comparison reads.

    ``gpu_name`` is ``None`` and ``gpu_count`` 0 on a machine without a GPU;
    ``servers`` is keyed by model name. Other keys may be present and are not
    compared.
    """

    schema: int
    gpu_name: str | None
    gpu_count: int
    gpu_driver: str | None
    servers: dict[str, ServerInfo]
    host: dict[str, Any]


def request_samples(result: RunResult) -> LlmSamples:
    """Per-request figures of a run, as stored in a baseline and compared by the verdict.

    ``itl_ms`` is each request's mean inter-token gap (one value per request,
    so both runs' samples are independent draws of the same thing) and
    ``output_tok_per_s`` each request's output tokens over its E2E. Warm-up and
    failed requests are left out; a request adds to a list only where the
    figure is defined (no TPOT for a one-token answer).
    """
    samples = LlmSamples(ttft_ms=[], tpot_ms=[], e2e_ms=[], itl_ms=[], output_tok_per_s=[])
    for record in result.measured:
        ttft, e2e, tpot = record.ttft_ns, record.e2e_ns, record.tpot_ns
        if ttft is None or e2e is None:
            continue
        samples["ttft_ms"].append(ttft / 1e6)
        samples["e2e_ms"].append(e2e / 1e6)
        if tpot is not None:
            samples["tpot_ms"].append(tpot / 1e6)
        gaps = record.itl_ns
        if gaps:
            samples["itl_ms"].append(sum(gaps) / len(gaps) / 1e6)
        if record.output_tokens and e2e > 0:
            samples["output_tok_per_s"].append(record.output_tokens / (e2e / 1e9))
    return samples


def _dist(d: Distribution | None) -> DistJson | None:
    return d.as_dict() if d is not None else None


def llm_info(
    result: RunResult, outcome: Outcome | None, *, engine: str = "", engine_version: str | None = None
) -> LlmInfo:
    """The ``extra_info["llm"]`` entry of one measured test."""
    s, sc = result.summary, result.scenario
    info = LlmInfo(
        schema=SCHEMA,
        model=result.model,
        backend=result.backend,
        engine=engine,
        engine_version=engine_version,
        input_tokens=sc.input_tokens,
        output_tokens=sc.output_tokens,
        concurrency=sc.concurrency,
        requests=s.requests,
        rate=sc.rate,
        ttft_ms=_dist(s.ttft_ms),
        itl_ms=_dist(s.itl_ms),
        tpot_ms=_dist(s.tpot_ms),
        e2e_ms=_dist(s.e2e_ms),
        queue_ms=_dist(s.queue_ms),
        output_tok_per_s=s.output_tok_per_s,
        total_tok_per_s=s.total_tok_per_s,
        request_per_s=s.request_per_s,
        error_rate=s.error_rate,
        errors=s.errors,
        completed=s.completed,
        output_length_misses=s.output_length_misses,
        input_tokens_mean=s.input_tokens_mean,
        output_tokens_mean=s.output_tokens_mean,
        duration_s=s.duration_s,
        outcome=outcome.kind if outcome is not None else "pass",
        reasons=list(outcome.reasons) if outcome is not None else [],
        notes=list(outcome.notes) if outcome is not None else [],
        invalid=list(result.invalid),
        loop_lag_ms=_dist(result.loop_lag_ms),
        samples=request_samples(result),
        telemetry=result.extra.get("telemetry", {}),
        slo=s.slo.as_dict(),
        good_requests=s.good_requests,
        slo_attainment=s.slo_attainment,
        goodput_rps=s.goodput_rps,
        goodput_tok_per_s=s.goodput_tok_per_s,
    )
    for key in ("traffic", "sweep", "capacity", "duration", "ab"):
        section = result.extra.get(key)
        if isinstance(section, dict):
            info[key] = section
    return info


def engine_version_of(llm: Mapping[str, Any]) -> str | None:
    """The engine version an entry recorded: ``engine_version`` (schema 2) or ``engine`` (schema 1)."""
    value = llm.get("engine_version") if llm.get("schema") != 1 else llm.get("engine")
    return str(value) if value else None


# -- sweeps and capacity ---------------------------------------------------------------------------

RUN_FIGURE_METRICS: tuple[str, ...] = ("capacity_concurrency", "capacity_rate", "peak_output_tok_per_s")
"""One number per run, compared run against run (``judge.noise.compare_run_figures``)."""
TRAFFIC_SPEC_KEYS: tuple[str, ...] = (
    "input", "output", "seed", "dataset", "shared_prefix_tokens", "prefix_groups", "turns", "prefix_cache",
)  # fmt: skip
"""The keys of ``traffic`` that say what was asked (the others record what it came to)."""


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


def point_info(result: RunResult) -> dict[str, Any]:
    """One measured load of a sweep or capacity search: the figures its curve and table show."""
    s, sc = result.summary, result.scenario

    def stat(d: Distribution | None, name: str) -> float | None:
        return _round(getattr(d, name)) if d is not None else None

    telemetry = result.extra.get("telemetry")
    energy = telemetry.get("energy_j_per_output_token") if isinstance(telemetry, Mapping) else None
    return {
        "concurrency": sc.concurrency,
        "rate": sc.rate,
        "requests": s.requests,
        "completed": s.completed,
        "error_rate": _round(s.error_rate, 4),
        "output_tok_per_s": _round(s.output_tok_per_s),
        "request_per_s": _round(s.request_per_s),
        "ttft_ms": {"p50": stat(s.ttft_ms, "p50"), "p95": stat(s.ttft_ms, "p95")},
        "tpot_ms": {"p50": stat(s.tpot_ms, "p50"), "p95": stat(s.tpot_ms, "p95")},
        "itl_ms": {"p50": stat(s.itl_ms, "p50")},
        "e2e_ms": {"p50": stat(s.e2e_ms, "p50"), "p95": stat(s.e2e_ms, "p95")},
        "slo_attainment": _round(s.slo_attainment, 4),
        "goodput_rps": _round(s.goodput_rps),
        "goodput_tok_per_s": _round(s.goodput_tok_per_s),
        "energy_j_per_output_token": energy,
        "invalid": list(result.invalid),
    }


def sweep_info(
    *,
    axis: str,
    loads: Sequence[float],
    points: Sequence[RunResult],
    knee: int | None,
    stopped: str | None,
    gain: float,
) -> dict[str, Any]:
    """``extra_info["llm"]["sweep"]``: every measured point, the knee and why the sweep stopped."""
    infos = [point_info(p) for p in points]
    rates = [i["output_tok_per_s"] for i in infos if i["output_tok_per_s"] is not None]
    return {
        "axis": axis,
        "loads": list(loads),
        "gain": gain,
        "points": infos,
        "knee": knee,
        "knee_load": (
            points[knee].scenario.concurrency if axis == "concurrency" else points[knee].scenario.rate
        )
        if knee is not None
        else None,
        "peak_output_tok_per_s": max(rates) if rates else None,
        "stopped": stopped,
    }


def run_figures(info: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """The one-number-per-run figures of an entry (or of ``RunResult.extra``), each with its resolution.

    ``capacity_concurrency`` moves in steps of 1 and ``capacity_rate`` in steps
    of its search's ``rate_step``: a change of one step is the search's own
    resolution, not evidence. Peak throughput has no step.
    """
    found: dict[str, tuple[float, float]] = {}
    capacity = info.get("capacity")
    if isinstance(capacity, Mapping):
        if isinstance(capacity.get("concurrency"), (int, float)):
            found["capacity_concurrency"] = (float(capacity["concurrency"]), 1.0)
        if isinstance(capacity.get("rate"), (int, float)):
            found["capacity_rate"] = (float(capacity["rate"]), float(capacity.get("rate_step") or 0.0))
    sweep = info.get("sweep")
    if isinstance(sweep, Mapping) and isinstance(sweep.get("peak_output_tok_per_s"), (int, float)):
        found["peak_output_tok_per_s"] = (float(sweep["peak_output_tok_per_s"]), 0.0)
    return found


def plan_of(info: Mapping[str, Any]) -> dict[str, Any]:
    """What an entry asked beyond its scenario, for "did the baseline measure the same thing?".

    The traffic's asked keys, a sweep's axis and loads, a capacity search's
    bounds, budget and attainment floor. Empty for a plain run.
    """
    plan: dict[str, Any] = {}
    traffic = info.get("traffic")
    if isinstance(traffic, Mapping):
        asked = {k: traffic[k] for k in TRAFFIC_SPEC_KEYS if k in traffic}
        if isinstance(asked.get("dataset"), Mapping):
            asked["dataset"] = asked["dataset"].get("sha256")
        plan["traffic"] = asked
    sweep = info.get("sweep")
    if isinstance(sweep, Mapping):
        plan["sweep"] = {"axis": sweep.get("axis"), "loads": sweep.get("loads")}
    capacity = info.get("capacity")
    if isinstance(capacity, Mapping):
        plan["capacity"] = capacity.get("search")
    return plan

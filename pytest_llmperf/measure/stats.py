"""Statistics over request records: percentiles, rates, confidence intervals.

Pure functions only: they take values or ``RequestRecord``s and return
numbers or ``Distribution``/``Summary`` values. No I/O, no clocks, no
knowledge of servers or of the event loop. A figure that the records cannot
support (no completed request, token counts the server never reported) is
``None``, never a guess.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pytest_llmperf.records import Distribution, RequestRecord, Scenario, Slo, Summary

NS_PER_MS = 1_000_000.0
NS_PER_S = 1_000_000_000.0

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom; beyond
# 30 the normal 1.96 is within 2.5% of the exact value.
_T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_Z95 = 1.959964


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation, as numpy's default."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac)


def distribution(values: Iterable[float]) -> Distribution | None:
    """Order statistics of ``values``; ``None`` for no values. Stddev is the
    sample (n - 1) one, and 0 for a single value."""
    data = sorted(float(v) for v in values)
    n = len(data)
    if n == 0:
        return None
    mean = math.fsum(data) / n
    stddev = math.sqrt(math.fsum((v - mean) ** 2 for v in data) / (n - 1)) if n > 1 else 0.0
    return Distribution(
        count=n,
        mean=mean,
        stddev=stddev,
        min=data[0],
        max=data[-1],
        p50=percentile(data, 50),
        p90=percentile(data, 90),
        p95=percentile(data, 95),
        p99=percentile(data, 99),
    )


def median_ci(values: Iterable[float]) -> tuple[float, float] | None:
    """Distribution-free 95% confidence interval of the median.

    The order statistics at ranks ``n/2 -+ 1.96 sqrt(n)/2`` (normal
    approximation of the binomial): no assumption on the shape of the latency
    distribution, which is skewed for every real server. ``None`` below six
    values, where the interval would be the whole sample.
    """
    data = sorted(values)
    n = len(data)
    if n < 6:
        return None
    half = _Z95 * math.sqrt(n) / 2.0
    lo = max(math.floor(n / 2.0 - half), 1)
    hi = min(math.ceil(1 + n / 2.0 + half), n)
    return float(data[lo - 1]), float(data[hi - 1])


def mean_ci(values: Iterable[float]) -> tuple[float, float] | None:
    """95% confidence interval of the mean (Student's t); ``None`` below two values."""
    data = [float(v) for v in values]
    n = len(data)
    if n < 2:
        return None
    mean = math.fsum(data) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in data) / (n - 1))
    t = _T95[n - 2] if n - 1 <= len(_T95) else _Z95
    half = t * sd / math.sqrt(n)
    return mean - half, mean + half


def relative_half_width(ci: tuple[float, float] | None, center: float) -> float:
    """Half the interval's width over ``center``; infinite when unknown."""
    if ci is None or center == 0:
        return math.inf
    return (ci[1] - ci[0]) / 2.0 / abs(center)


ADAPTIVE_TARGET_OF_TOLERANCE = 0.5
"""Adaptive stopping aims its 95% CI half-width at this fraction of the tolerance.

A CI as wide as the tolerance itself leaves a change at the tolerance
undecidable half of the time; at half the tolerance a change of twice the
interval's half-width (the tolerance) is outside the interval of an
unchanged run. With the default 5% decode tolerance the target is 2.5%.
"""


def adaptive_target_rel_ci(tolerance: float) -> float:
    """The relative CI half-width adaptive stopping should reach for ``tolerance`` (a fraction)."""
    return tolerance * ADAPTIVE_TARGET_OF_TOLERANCE


def effective_samples(requests: int, window_s: float, median_e2e_s: float | None) -> int:
    """How many independent samples ``requests`` requests in a window of ``window_s`` carry.

    Requests in flight together see the same server state (one batch, one
    scheduling hiccup), so they share their fate: ten requests at concurrency
    4 arrive in waves of 4, 4 and 2 and carry about three samples, not ten.
    Requests that do not overlap are separate draws. The number of
    non-overlapping request lifetimes that fit in the window is
    ``window / median E2E``: ``n`` at concurrency 1, ``n / c`` in a closed
    loop at concurrency ``c``, and ``n`` again for a slow open-loop rate.
    Clamped to ``1..requests``; ``requests`` when E2E is unknown.
    """
    if requests <= 0:
        return 0
    if median_e2e_s is None or median_e2e_s <= 0 or window_s <= 0:
        return requests
    return max(1, min(requests, round(window_s / median_e2e_s)))


def precision_reached(records: Iterable[RequestRecord], target_rel_ci: float) -> bool:
    """True once both adaptive-stopping intervals are within ``target_rel_ci``.

    Median TPOT gets the order-statistic interval. Output tok/s is one number
    per run, so its interval comes through Little's law: with the load held
    fixed, output tok/s = in-flight requests x tokens per request / E2E, so its
    relative uncertainty is that of the mean E2E per output token. Requests in
    flight together are not independent (``effective_samples``), so both
    intervals are widened by ``sqrt(n / effective n)``, the design effect of
    samples that come in waves.
    """
    tpot: list[float] = []
    e2e_per_token: list[float] = []
    e2e: list[float] = []
    first_sent, last_end = math.inf, -math.inf
    for r in records:
        if r.warmup or not r.ok:
            continue
        per_token = r.tpot_ns
        if per_token is not None:
            tpot.append(per_token)
        took = r.e2e_ns
        if took is not None:
            e2e.append(took)
            first_sent, last_end = min(first_sent, r.sent_ns), max(last_end, r.end_ns)
            if r.output_tokens:
                e2e_per_token.append(took / r.output_tokens)
    if not tpot or not e2e_per_token:
        return False
    tpot.sort()
    e2e.sort()
    n_eff = effective_samples(len(e2e), (last_end - first_sent) / NS_PER_S, percentile(e2e, 50) / NS_PER_S)
    inflation = math.sqrt(len(e2e) / n_eff)
    mid = percentile(tpot, 50)
    mean = math.fsum(e2e_per_token) / len(e2e_per_token)
    return (
        relative_half_width(median_ci(tpot), mid) * inflation <= target_rel_ci
        and relative_half_width(mean_ci(e2e_per_token), mean) * inflation <= target_rel_ci
    )


def _ms(values: Iterable[float]) -> Distribution | None:
    return distribution(v / NS_PER_MS for v in values)


def summarize(records: Iterable[RequestRecord], scenario: Scenario) -> Summary:
    """Figures of the measured (non-warm-up) records of one run.

    Rates are over the measured window, from the first ``sent_ns`` to the last
    ``end_ns``. Token rates count completed requests only and are ``None`` when
    any completed request lacks the server's usage count.
    """
    measured = [r for r in records if not r.warmup]
    done = [r for r in measured if r.ok]
    requests = len(measured)
    completed = len(done)
    errors = requests - completed
    duration_ns = (max(r.end_ns for r in measured) - min(r.sent_ns for r in measured)) if measured else 0
    duration_s = duration_ns / NS_PER_S

    outputs = [r.output_tokens for r in done]
    inputs = [r.input_tokens for r in done]
    out_known = [n for n in outputs if n is not None]
    in_known = [n for n in inputs if n is not None]
    all_out = bool(done) and len(out_known) == len(done)
    all_in = bool(done) and len(in_known) == len(done)

    def rate(count: float) -> float | None:
        return count / duration_s if duration_s > 0 else None

    itl: list[float] = []
    for r in done:
        itl.extend(r.itl_ns)
    return Summary(
        requests=requests,
        completed=completed,
        errors=errors,
        duration_s=duration_s,
        ttft_ms=_ms(t for r in done if (t := r.ttft_ns) is not None),
        itl_ms=_ms(itl),
        tpot_ms=_ms(p for r in done if (p := r.tpot_ns) is not None),
        e2e_ms=_ms(e for r in done if (e := r.e2e_ns) is not None),
        queue_ms=_ms(r.queue_ns for r in measured),
        request_per_s=rate(completed) if done else None,
        output_tok_per_s=rate(sum(out_known)) if all_out else None,
        total_tok_per_s=rate(sum(out_known) + sum(in_known)) if all_out and all_in else None,
        error_rate=errors / requests if requests else 0.0,
        input_tokens_mean=sum(in_known) / len(in_known) if in_known else None,
        output_tokens_mean=sum(out_known) / len(out_known) if out_known else None,
        # Each request against its own ask: length distributions ask different lengths.
        output_length_misses=sum(
            1 for r in done if r.output_tokens != (r.output_tokens_requested or scenario.output_tokens)
        ),
    )


# -- goodput -------------------------------------------------------------------------------------


def is_good(record: RequestRecord, slo: Slo) -> bool:
    """Whether a request completed and met every per-request limit, as vLLM's ``--goodput`` counts.

    TTFT and E2E count from ``scheduled_ns``, when the request was due, so a
    request that waited for a free slot carries that wait. A limit on a figure
    the request does not define (the TPOT of a one-token answer) holds: vLLM
    counts its TPOT as 0.
    """
    if not record.ok:
        return False
    if slo.ttft_ms is not None and (record.chunk_ns[0] - record.scheduled_ns) / NS_PER_MS > slo.ttft_ms:
        return False
    if slo.e2e_ms is not None and (record.end_ns - record.scheduled_ns) / NS_PER_MS > slo.e2e_ms:
        return False
    tpot = record.tpot_ns
    return slo.tpot_ms is None or tpot is None or tpot / NS_PER_MS <= slo.tpot_ms


def with_goodput(summary: Summary, records: Iterable[RequestRecord], slo: Slo) -> Summary:
    """``summary`` with its goodput figures: good requests, SLO attainment, goodput in req/s and tok/s.

    Over the measured (non-warm-up) requests and the summary's measured window.
    Attainment is good / measured (a failed request is never good). Goodput in
    tok/s counts the output tokens of good requests and is ``None`` when any
    of them lacks a usage count; both rates are ``None`` without a window.
    """
    measured = [r for r in records if not r.warmup]
    good = [r for r in measured if is_good(r, slo)]
    window = summary.duration_s
    tokens = [r.output_tokens for r in good]
    known = all(t is not None for t in tokens)
    return dataclasses.replace(
        summary,
        slo=slo,
        good_requests=len(good),
        slo_attainment=len(good) / len(measured) if measured else None,
        goodput_rps=len(good) / window if window > 0 else None,
        goodput_tok_per_s=sum(t or 0 for t in tokens) / window if window > 0 and known else None,
    )


# -- sweeps: saturation and the knee ---------------------------------------------------------------

SATURATION_GAIN = 0.10
"""A point "adds throughput" when its output tok/s beats every earlier point's by more than this."""
PLATEAU_POINTS = 2
"""A sweep stops after this many points in a row that add no throughput."""
LATENCY_BLOWUP = 10.0
"""A sweep stops when median E2E reaches this multiple of the first point's."""
ERROR_BLOWUP = 0.10
"""A sweep stops when more than this fraction of a point's requests failed."""


@dataclass(frozen=True)
class CurvePoint:
    """What the sweep rules read of one measured load: its throughput, latency and errors."""

    load: float
    output_tok_per_s: float | None
    e2e_ms_p50: float | None
    error_rate: float


def knee(points: Sequence[CurvePoint], gain: float = SATURATION_GAIN) -> int | None:
    """Index of the knee: the lightest load that no later load beats by more than ``gain`` in tok/s.

    Loads beyond it buy less than ``gain`` (10%) more throughput each, and
    only add latency. ``None`` when no point has a throughput.
    """
    rates = [p.output_tok_per_s for p in points]
    for i, rate in enumerate(rates):
        if rate is None:
            continue
        if all(later is None or later <= rate * (1 + gain) for later in rates[i + 1 :]):
            return i
    return None


def saturation(
    points: Sequence[CurvePoint],
    *,
    gain: float = SATURATION_GAIN,
    plateau: int = PLATEAU_POINTS,
    latency_blowup: float = LATENCY_BLOWUP,
    error_blowup: float = ERROR_BLOWUP,
) -> str | None:
    """Why a sweep should stop after its last point (the server saturated), or ``None`` to go on.

    * errors exploded: more than ``error_blowup`` of the last point's requests failed;
    * latency exploded: its median E2E is ``latency_blowup`` times the first point's;
    * throughput stopped rising: each of the last ``plateau`` points stayed within
      ``gain`` of the best throughput measured before it.
    """
    if not points:
        return None
    last = points[-1]
    name = f"{last.load:g}"
    if last.error_rate > error_blowup:
        return f"errors exploded at {name}: {last.error_rate:.0%} of its requests failed"
    if last.output_tok_per_s is None:
        return f"no throughput at {name}: no completed request with a token count"
    first = points[0].e2e_ms_p50
    if first and last.e2e_ms_p50 is not None and last.e2e_ms_p50 >= latency_blowup * first:
        return (
            f"latency exploded at {name}: median E2E {last.e2e_ms_p50:.0f} ms is "
            f"{last.e2e_ms_p50 / first:.0f}x the first point's"
        )
    if len(points) <= plateau:
        return None
    for k in range(len(points) - plateau, len(points)):
        best = max((p.output_tok_per_s or 0.0) for p in points[:k])
        now = points[k].output_tok_per_s
        if now is not None and now > best * (1 + gain):
            return None
    loads = ", ".join(f"{p.load:g}" for p in points[-plateau:])
    return f"saturated: throughput at {loads} rose less than {gain:.0%} over the best before"


# -- run-to-run noise ---------------------------------------------------------------------------

_MAD_TO_SIGMA_OF_DIFFS = 1.0 / (0.6744897501960817 * math.sqrt(2.0))
"""Median |x_i - x_j| of normal draws is 0.6745 * sqrt(2) * sigma; this turns it back into sigma."""


def pairwise_spread(groups: Iterable[Sequence[float]]) -> tuple[float, int] | None:
    """A robust standard deviation pooled over groups, and its degrees of freedom.

    Each group holds repeated figures of one thing (one case's run medians,
    in logs); groups may differ in level. The estimate is the median of every
    within-group difference ``|x_i - x_j|``, scaled to a standard deviation
    (``x_i - x_j`` of two normal draws has sd ``sigma * sqrt(2)``). It needs no
    centre, so two runs per group already count, and one wild value moves
    only its own pairs (breakdown about 29%). Degrees of freedom are those of
    the pooled variance, ``sum(len(group) - 1)``. ``None`` without any pair.
    """
    diffs: list[float] = []
    dof = 0
    for group in groups:
        values = list(group)
        if len(values) < 2:
            continue
        dof += len(values) - 1
        diffs.extend(abs(a - b) for i, a in enumerate(values) for b in values[i + 1 :])
    if not diffs:
        return None
    diffs.sort()
    return percentile(diffs, 50) * _MAD_TO_SIGMA_OF_DIFFS, dof


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) (continued fraction, modified Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _incomplete_beta(b, a, 1.0 - x)
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-14:
            break
    return front * f / a


def t_cdf(t: float, dof: float) -> float:
    """P(T <= t) for Student's t with ``dof`` degrees of freedom."""
    tail = 0.5 * _incomplete_beta(dof / 2.0, 0.5, dof / (dof + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, dof: float) -> float:
    """The ``p`` quantile of Student's t (bisection on ``t_cdf``; the normal one for dof > 1e6)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"quantile of p={p!r}: p must be between 0 and 1")
    if dof <= 0:
        raise ValueError(f"Student's t needs dof > 0, got {dof!r}")
    if p < 0.5:
        return -t_quantile(1.0 - p, dof)
    if dof > 1e6:
        from statistics import NormalDist

        return NormalDist().inv_cdf(p)
    low, high = 0.0, 1.0
    while t_cdf(high, dof) < p:
        low, high = high, high * 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if t_cdf(mid, dof) < p:
            low = mid
        else:
            high = mid
        if high - low < 1e-10 * max(1.0, high):
            break
    return (low + high) / 2.0

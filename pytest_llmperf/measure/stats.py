"""Statistics over request records: percentiles, rates, confidence intervals.

Pure functions only: they take values or ``RequestRecord``s and return
numbers or ``Distribution``/``Summary`` values. No I/O, no clocks, no
knowledge of servers or of the event loop. A figure that the records cannot
support (no completed request, token counts the server never reported) is
``None``, never a guess.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from pytest_llmperf.records import Distribution, RequestRecord, Scenario, Summary

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


def precision_reached(records: Iterable[RequestRecord], target_rel_ci: float) -> bool:
    """True once both adaptive-stopping intervals are within ``target_rel_ci``.

    Median TPOT gets the order-statistic interval. Output tok/s is one number
    per run, so its interval comes through Little's law: with the load held
    fixed, output tok/s = in-flight requests x tokens per request / E2E, so its
    relative uncertainty is that of the mean E2E per output token.
    """
    tpot: list[float] = []
    e2e_per_token: list[float] = []
    for r in records:
        if r.warmup or not r.ok:
            continue
        per_token = r.tpot_ns
        if per_token is not None:
            tpot.append(per_token)
        e2e = r.e2e_ns
        if e2e is not None and r.output_tokens:
            e2e_per_token.append(e2e / r.output_tokens)
    if not tpot or not e2e_per_token:
        return False
    tpot.sort()
    mid = percentile(tpot, 50)
    mean = math.fsum(e2e_per_token) / len(e2e_per_token)
    return (
        relative_half_width(median_ci(tpot), mid) <= target_rel_ci
        and relative_half_width(mean_ci(e2e_per_token), mean) <= target_rel_ci
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
        output_length_misses=sum(1 for n in outputs if n != scenario.output_tokens),
    )

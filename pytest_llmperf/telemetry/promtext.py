"""A small parser for the Prometheus text exposition format, and histogram arithmetic.

vLLM (through ``prometheus_client``) and llama-server (``--metrics``) both
serve text format 0.0.4: ``# HELP`` / ``# TYPE`` comments, then one sample a
line, ``name{label="value",...} value [timestamp]``. Histograms are the
``_bucket`` (cumulative, labelled ``le``), ``_sum`` and ``_count`` series of
one family. llama-server prints values with C++ stream defaults, so counters
above a million arrive rounded to six significant digits (``1.23457e+06``);
``float`` reads them, and their deltas are only as precise as that.

The parser is lenient on purpose: a line it cannot read is skipped and
counted in ``Snapshot.skipped`` instead of failing the run, since a server's
metrics page is evidence beside the measurement, never the measurement. An
OpenMetrics exemplar (`` # {...}`` after the value) and ``# EOF`` are ignored.

This module does no I/O and knows no engine: which metrics matter lives in
``servermetrics``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Labels = tuple[tuple[str, str], ...]

_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


@dataclass(frozen=True)
class Sample:
    """One line of the page: a series (name + sorted labels) and its value."""

    name: str
    labels: Labels
    value: float

    def label(self, key: str) -> str | None:
        for k, v in self.labels:
            if k == key:
                return v
        return None


@dataclass(frozen=True)
class Histogram:
    """One histogram summed over its series: cumulative buckets by upper bound."""

    buckets: tuple[tuple[float, float], ...]
    sum: float
    count: float

    def minus(self, before: Histogram) -> Histogram | None:
        """This histogram minus an earlier one, or ``None`` if it went backwards.

        A count or sum that decreased means the server restarted between the
        two scrapes (counters reset), and no honest delta exists.
        """
        if self.count < before.count or self.sum < before.sum:
            return None
        earlier = dict(before.buckets)
        buckets = []
        for le, cum in self.buckets:
            delta = cum - earlier.get(le, 0.0)
            if delta < 0:
                return None
            buckets.append((le, delta))
        return Histogram(tuple(buckets), self.sum - before.sum, self.count - before.count)

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count > 0 else None

    def quantile_le(self, q: float) -> float | None:
        """The upper bound of the bucket holding the q-quantile: "p-q is at most this".

        Prometheus' ``histogram_quantile`` interpolates inside that bucket,
        which with vLLM's wide buckets can put a 0.03 ms queue time's median
        at 150 ms; a bound is what the histogram actually knows. ``None``
        with no observations or when the quantile lies in the ``+Inf`` bucket.
        """
        if self.count <= 0:
            return None
        rank = q * self.count
        for le, cum in self.buckets:
            if cum >= rank:
                return None if math.isinf(le) else le
        return None


@dataclass(frozen=True)
class Snapshot:
    """Every sample of one scrape, with the declared family types."""

    samples: tuple[Sample, ...]
    types: Mapping[str, str]
    skipped: int = 0

    def names(self) -> frozenset[str]:
        return frozenset(s.name for s in self.samples)

    def series(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.name == name]

    def total(self, name: str) -> float | None:
        """Sum over every series of ``name`` (engines, models), ``None`` if absent."""
        found = self.series(name)
        return math.fsum(s.value for s in found) if found else None

    def maximum(self, name: str) -> float | None:
        """Largest value over the series of ``name``: gauges such as cache usage."""
        found = [s.value for s in self.series(name) if not math.isnan(s.value)]
        return max(found) if found else None

    def histogram(self, name: str) -> Histogram | None:
        """Family ``name`` summed over its series (every label but ``le``)."""
        count = self.total(f"{name}_count")
        total = self.total(f"{name}_sum")
        if count is None or total is None:
            return None
        by_le: dict[float, float] = {}
        for s in self.series(f"{name}_bucket"):
            le = s.label("le")
            if le is None:
                continue
            bound = _parse_float(le)
            if bound is None:
                continue
            by_le[bound] = by_le.get(bound, 0.0) + s.value
        return Histogram(tuple(sorted(by_le.items())), total, count)


def parse(text: str, only: tuple[str, ...] | None = None) -> Snapshot:
    """Parse a metrics page; unreadable lines are counted, not raised.

    ``only`` keeps just the samples whose line starts with one of these
    prefixes and drops the comments: polling a few gauges out of vLLM's
    600-line page then costs a string scan instead of a full parse, which
    matters because the parsing thread shares the GIL with the measuring
    event loop.
    """
    samples: list[Sample] = []
    types: dict[str, str] = {}
    skipped = 0
    for raw in text.splitlines():
        if only is not None and not raw.startswith(only):
            continue
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 4 and parts[1] == "TYPE":
                types[parts[2]] = parts[3].strip()
            continue
        sample = _parse_sample(line)
        if sample is None:
            skipped += 1
        else:
            samples.append(sample)
    return Snapshot(tuple(samples), types, skipped)


def _parse_float(text: str) -> float | None:
    try:
        return float(text)  # accepts +Inf, -Inf, NaN and 1.2e+06
    except ValueError:
        return None


def _parse_sample(line: str) -> Sample | None:
    brace = line.find("{")
    space = line.find(" ")
    labels: Labels = ()
    if brace != -1 and (space == -1 or brace < space):
        name = line[:brace]
        parsed = _parse_labels(line, brace + 1)
        if parsed is None:
            return None
        labels, end = parsed
        rest = line[end:]
    else:
        if space == -1:
            return None
        name, rest = line[:space], line[space:]
    # Value, optional timestamp, optional OpenMetrics exemplar after " # ".
    fields = rest.split("#", 1)[0].split()
    if not name or not fields:
        return None
    value = _parse_float(fields[0])
    if value is None:
        return None
    return Sample(name, labels, value)


def _parse_labels(line: str, pos: int) -> tuple[Labels, int] | None:
    """Read ``key="value",...}`` from ``pos``; return the labels and the index after ``}``."""
    labels: list[tuple[str, str]] = []
    n = len(line)
    while pos < n:
        while pos < n and line[pos] in " ,":
            pos += 1
        if pos < n and line[pos] == "}":
            return tuple(sorted(labels)), pos + 1
        eq = line.find("=", pos)
        if eq == -1 or eq + 1 >= n or line[eq + 1] != '"':
            return None
        key = line[pos:eq].strip()
        pos = eq + 2
        chars: list[str] = []
        while pos < n and line[pos] != '"':
            if line[pos] == "\\" and pos + 1 < n:
                chars.append(_ESCAPES.get(line[pos + 1], "\\" + line[pos + 1]))
                pos += 2
            else:
                chars.append(line[pos])
                pos += 1
        if pos >= n:
            return None
        labels.append((key, "".join(chars)))
        pos += 1
    return None


def counter_delta(before: Snapshot, after: Snapshot, name: str) -> float | None:
    """``after - before`` of a counter summed over its series.

    ``None`` when the counter is missing from either page or went backwards
    (the server restarted, so the delta would be a guess).
    """
    a, b = after.total(name), before.total(name)
    if a is None or b is None or a < b:
        return None
    return a - b


def first_present(snapshot: Snapshot, names: Iterable[str]) -> str | None:
    """The first of ``names`` (newest spelling first) that the page carries."""
    have = snapshot.names()
    for name in names:
        if name in have or f"{name}_count" in have:
            return name
    return None

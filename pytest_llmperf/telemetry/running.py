"""Running mean / min / max of one telemetry figure, so long runs need no sample list.

The sampler keeps one accumulator per figure instead of every sample (a
256-core machine at 10 Hz for ten minutes would otherwise hold 1.5 million
per-core values just to report two numbers per core). ``None`` readings are
skipped, so a figure that was never measured stays absent rather than zero.
"""

from __future__ import annotations

import math


class RunningStat:
    """Count, sum, min and max of the non-``None`` values added so far."""

    __slots__ = ("count", "max", "min", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, value: float | None) -> None:
        if value is None or math.isnan(value):
            return
        self.count += 1
        self.total += value
        self.min = min(self.min, value)
        self.max = max(self.max, value)

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    @property
    def maximum(self) -> float | None:
        return self.max if self.count else None

    @property
    def minimum(self) -> float | None:
        return self.min if self.count else None


def rounded(value: float | None, digits: int = 3) -> float | None:
    """Round for JSON (sub-milli noise helps no reader); ``None`` stays ``None``."""
    return None if value is None else round(value, digits)

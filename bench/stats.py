"""Median, min and max of repeated measurements, and the percentiles the README quotes."""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    """Repeated timings in milliseconds."""

    median: float
    low: float
    high: float
    p99: float
    runs: int

    def row(self) -> str:
        """'median (min-max), n runs' for a table cell."""
        return f"{self.median:.2f} ms ({self.low:.2f}-{self.high:.2f}), n={self.runs}"


def summarize(seconds: list[float]) -> Summary:
    """Summarize timings given in seconds."""
    values = sorted(s * 1000 for s in seconds)
    p99 = values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]
    return Summary(statistics.median(values), values[0], values[-1], p99, len(values))

"""The ratio of medians of two alternated variants, its bootstrap interval, and the verdict it supports."""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass

LEVEL = 0.95
RESAMPLES = 2000
MIN_ROUNDS = 6  # no interval from fewer rounds: with 3 or 4 the bootstrap "found" differences between identical tables


def look_alpha(look: int, alpha: float = 1 - LEVEL) -> float:
    """The error allowed at the look-th look (1-based); they add up to alpha, so peeking cannot inflate it."""
    # Looking after every few rounds and stopping at the first interval that excludes 1.0 would, with
    # identical variants, "find" a difference far more often than 5%: spend alpha as 6/(pi^2 k^2) instead.
    return alpha * 6 / (math.pi**2 * look**2)


def next_look(rounds: int) -> int:
    """Looks at the data are spaced geometrically (6, 9, 14, 21, ...), so their number grows slowly."""
    return max(rounds + 1, math.ceil(rounds * 1.5))


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile (Cornish-Fisher from the normal one): wider than z for the few rounds we have."""
    # The bootstrap understates the spread of a median over a handful of rounds; t's heavier tails offset it.
    z = statistics.NormalDist().inv_cdf(p)
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


@dataclass(frozen=True)
class Interval:
    """The ratio of medians after/before and its interval, at the confidence the looks allowed."""

    ratio: float
    low: float
    high: float
    confidence: float
    rounds: int

    @property
    def decided(self) -> bool:
        """True when the interval excludes 1.0."""
        return self.high < 1.0 or self.low > 1.0

    def verdict(self, seconds: float) -> str:
        """'faster by X-Y%', 'slower by X-Y%' or 'no difference measurable in N s' (after against before)."""
        if self.high < 1.0:
            return f"faster by {(1 - self.high) * 100:.0f}-{(1 - self.low) * 100:.0f}%"
        if self.low > 1.0:
            return f"slower by {(self.low - 1) * 100:.0f}-{(self.high - 1) * 100:.0f}%"
        return f"no difference measurable in {seconds:.0f} s"


def ratio_interval(
    before: list[float], after: list[float], alpha: float, *, rng: random.Random, resamples: int = RESAMPLES
) -> Interval:
    """Paired bootstrap over rounds of median(after)/median(before); a normal interval on the log ratio."""
    if len(before) != len(after) or len(before) < MIN_ROUNDS:
        raise ValueError(f"need {MIN_ROUNDS} or more paired rounds, got {len(before)} and {len(after)}")
    ratio = statistics.median(after) / statistics.median(before)
    indices = range(len(before))
    logs = []
    for _ in range(resamples):
        # Resample whole rounds: both variants of a round ran back to back under the same machine load.
        picked = rng.choices(indices, k=len(before))
        logs.append(
            math.log(statistics.median([after[i] for i in picked]) / statistics.median([before[i] for i in picked]))
        )
    # The bootstrap's spread of the log ratio gives a smooth interval at any level (a percentile interval
    # at 99.9% would rest on two or three resamples).
    spread = statistics.stdev(logs)
    z = t_quantile(1 - alpha / 2, len(before) - 1)
    centre = math.log(ratio)
    return Interval(ratio, math.exp(centre - z * spread), math.exp(centre + z * spread), 1 - alpha, len(before))

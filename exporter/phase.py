"""When a check runs after its first run: on a grid of its interval, at a stable offset from its target's name."""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime

from apscheduler.triggers.base import BaseTrigger

# A target's checks land within this many seconds of the target's phase (less for intervals shorter than ten times
# this): they queue on the target's one connection anyway, and the gap keeps one target's checks from arriving as a
# burst.
WITHIN_TARGET_SECONDS = 2.0


def fraction(name: str) -> float:
    """A stable number in [0, 1) from NAME: the same in every process and on every machine (unlike hash())."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def phase_of(target: str, job: str, interval: float) -> float:
    """Seconds into each interval (counted from the Unix epoch) at which this target's job runs."""
    # The target's name spreads a fleet over the interval; the job's name spreads one target's checks a little.
    within = min(WITHIN_TARGET_SECONDS, interval / 10)
    return (fraction(target) * interval + fraction(job) * within) % interval


def next_on_grid(after: float, interval: float, phase: float) -> float:
    """The first time strictly after AFTER (Unix seconds) that is PHASE seconds into an interval."""
    return phase + (math.floor((after - phase) / interval) + 1) * interval


class PhasedTrigger(BaseTrigger):  # type: ignore[misc]  # APScheduler 3 ships no type hints
    """Every INTERVAL seconds at PHASE seconds into the interval; the first run is set by whoever adds the job."""

    __slots__ = ("interval", "phase")

    def __init__(self, interval: float, phase: float) -> None:
        self.interval = interval
        self.phase = phase

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime:
        """The grid point after the previous run, at least half an interval later; the next one after NOW at first."""
        # At least half an interval: a first run (soon after start) or a run moved to now (a target that came back)
        # is not followed by another a moment later, and the run after it is back on the target's phase.
        after = now.timestamp() if previous_fire_time is None else previous_fire_time.timestamp() + self.interval / 2
        return datetime.fromtimestamp(next_on_grid(after, self.interval, self.phase), UTC)

    def __str__(self) -> str:
        """As APScheduler prints a trigger in its logs."""
        return f"phased[interval={self.interval:g}s, phase={self.phase:.3f}s]"

"""Run an attempt again after errors a caller calls passing, with exponential backoff between the tries."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """How often and how patiently to retry: attempts, first pause and longest pause, in seconds."""

    max_attempts: int = 10
    initial: float = 0.2
    maximum: float = 10.0
    # Each pause a random 50-100% of its step, so that clients that failed together do not retry together.
    jitter: bool = True

    def pause(self, failures: int) -> float:
        """Seconds to wait after the failures-th failed attempt: the step doubles each time, up to maximum."""
        step = min(self.maximum, self.initial * 2.0 ** (failures - 1))
        return step * random.uniform(0.5, 1.0) if self.jitter else step


def retry(
    attempt: Callable[[], T],
    retryable: Callable[[Exception], bool],
    backoff: Backoff,
    failed: Callable[[int, Exception, float | None], None],
) -> T:
    """attempt() until it returns, up to backoff.max_attempts times, sleeping between tries after retryable errors.

    failed(number, error, pause) hears of every retryable failure (the caller logs it in its own words); pause is
    None on the last attempt, whose error is raised again. Any other error is raised at once.
    """
    for number in range(1, backoff.max_attempts + 1):
        try:
            return attempt()
        except Exception as error:
            if not retryable(error):
                raise
            if number == backoff.max_attempts:
                failed(number, error, None)
                raise
            pause = backoff.pause(number)
            failed(number, error, pause)
            time.sleep(pause)
    raise ValueError(f"backoff.max_attempts must be at least 1, not {backoff.max_attempts}")

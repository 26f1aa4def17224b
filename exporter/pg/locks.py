"""Retry work that timed out waiting for a lock (SQLSTATE 55P03), with jittered exponential backoff."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from psycopg import errors

T = TypeVar("T")


class LockRetriesExhausted(Exception):
    """Every attempt timed out waiting for a lock."""


@dataclass(frozen=True)
class Backoff:
    """How often and how patiently to retry: attempts, first pause and longest pause, in seconds."""

    max_attempts: int = 10
    initial: float = 0.2
    maximum: float = 10.0


def retry_lock_timeouts(
    attempt: Callable[[], T], what: str, backoff: Backoff, log: logging.Logger, give_up: Callable[[int, Exception], str]
) -> T:
    """Call attempt() until it raises no LockNotAvailable; sleep between tries; give_up(n, error) words the end.

    attempt() must leave nothing held when it raises (roll its transaction back), so the sleep holds no lock.
    """
    delay = backoff.initial
    for number in range(1, backoff.max_attempts + 1):
        try:
            return attempt()
        except errors.LockNotAvailable as error:
            if number == backoff.max_attempts:
                log.error("%s: lock timeout on attempt %d/%d, giving up", what, number, backoff.max_attempts)
                raise LockRetriesExhausted(give_up(number, error)) from error
            pause = min(backoff.maximum, delay) * random.uniform(0.5, 1.0)
            log.warning(
                "%s: lock timeout (55P03) on attempt %d/%d; retrying in %.2fs",
                what,
                number,
                backoff.max_attempts,
                pause,
            )
            time.sleep(pause)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover

"""Retry work that timed out waiting for a lock (SQLSTATE 55P03), with jittered exponential backoff."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from psycopg import errors

from exporter.pg.retry import Backoff, retry

__all__ = ["Backoff", "LockRetriesExhausted", "retry_lock_timeouts"]

T = TypeVar("T")


class LockRetriesExhausted(Exception):
    """Every attempt timed out waiting for a lock."""


def retry_lock_timeouts(
    attempt: Callable[[], T], what: str, backoff: Backoff, log: logging.Logger, give_up: Callable[[int, Exception], str]
) -> T:
    """Call attempt() until it raises no LockNotAvailable; sleep between tries; give_up(n, error) words the end.

    attempt() must leave nothing held when it raises (roll its transaction back), so the sleep holds no lock.
    """

    def failed(number: int, error: Exception, pause: float | None) -> None:
        if pause is None:
            log.error("%s: lock timeout on attempt %d/%d, giving up", what, number, backoff.max_attempts)
        else:
            log.warning(
                "%s: lock timeout (55P03) on attempt %d/%d; retrying in %.2fs",
                what,
                number,
                backoff.max_attempts,
                pause,
            )

    try:
        return retry(attempt, lambda error: isinstance(error, errors.LockNotAvailable), backoff, failed)
    except errors.LockNotAvailable as error:  # only the last attempt's gets out of retry()
        raise LockRetriesExhausted(give_up(backoff.max_attempts, error)) from error

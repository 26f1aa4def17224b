"""Run one transaction under lock_timeout, and retry it with backoff when a lock is not granted."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import psycopg
from psycopg import errors

from migrations.options import Options, milliseconds

log = logging.getLogger("partkey-migrate")

T = TypeVar("T")
TimeoutKind = Literal["ddl", "scan"]


class LockRetriesExhausted(Exception):
    """Every attempt timed out waiting for a lock."""


def apply_timeouts(conn: psycopg.Connection[Any], options: Options, kind: TimeoutKind) -> None:
    """SET LOCAL the run's limits; VALIDATE and verification scans get the scan limit instead."""
    statement = options.scan_timeout if kind == "scan" else options.statement_timeout
    conn.execute("SELECT set_config('lock_timeout', %s, true)", (milliseconds(options.lock_timeout),))
    conn.execute("SELECT set_config('statement_timeout', %s, true)", (milliseconds(statement),))


def with_lock_retries(
    conn: psycopg.Connection[Any],
    options: Options,
    what: str,
    work: Callable[[], T],
    kind: TimeoutKind = "ddl",
) -> T:
    """Run work() in its own transaction; on SQLSTATE 55P03 roll back, sleep outside it, try again."""
    delay = options.backoff_initial
    for attempt in range(1, options.max_attempts + 1):
        try:
            with conn.transaction():
                apply_timeouts(conn, options, kind)
                return work()
        except errors.LockNotAvailable as error:
            # The with-block has rolled back here: the sleep below holds no lock and no open transaction.
            if attempt == options.max_attempts:
                log.error("%s: lock timeout on attempt %d/%d, giving up", what, attempt, options.max_attempts)
                raise LockRetriesExhausted(
                    f"{what}: no lock within {options.lock_timeout:g}s after {attempt} attempts "
                    f"({str(error).strip()}); nothing of this step was applied, re-run later"
                ) from error
            pause = min(options.backoff_max, delay) * random.uniform(0.5, 1.0)
            log.warning(
                "%s: lock timeout (55P03) on attempt %d/%d; retrying in %.2fs",
                what,
                attempt,
                options.max_attempts,
                pause,
            )
            time.sleep(pause)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover

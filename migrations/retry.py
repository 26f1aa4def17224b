"""Run one transaction under the run's lock_timeout, retried (exporter.pg.locks) when a lock is not granted."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import psycopg

from exporter.pg.limits import set_local_limits
from exporter.pg.locks import Backoff, LockRetriesExhausted, retry_lock_timeouts
from migrations.options import Options

__all__ = ["LockRetriesExhausted", "apply_timeouts", "backoff", "with_lock_retries"]

log = logging.getLogger("partkey-migrate")

T = TypeVar("T")
TimeoutKind = Literal["ddl", "scan"]


def backoff(options: Options) -> Backoff:
    """The run's retry bounds."""
    return Backoff(options.max_attempts, options.backoff_initial, options.backoff_max)


def apply_timeouts(conn: psycopg.Connection[Any], options: Options, kind: TimeoutKind) -> None:
    """SET LOCAL the run's limits; VALIDATE and verification scans get the scan limit instead."""
    statement = options.scan_timeout if kind == "scan" else options.statement_timeout
    set_local_limits(conn, lock_timeout=options.lock_timeout, statement_timeout=statement)


def with_lock_retries(
    conn: psycopg.Connection[Any],
    options: Options,
    what: str,
    work: Callable[[], T],
    kind: TimeoutKind = "ddl",
) -> T:
    """Run work() in its own transaction; on SQLSTATE 55P03 roll back, sleep outside it, try again."""

    def attempt() -> T:
        # Leaving the with-block on an error rolls back: the sleep between attempts holds no lock.
        with conn.transaction():
            apply_timeouts(conn, options, kind)
            return work()

    return retry_lock_timeouts(
        attempt,
        what,
        backoff(options),
        log,
        lambda attempts, error: (
            f"{what}: no lock within {options.lock_timeout:g}s after {attempts} attempts "
            f"({str(error).strip()}); nothing of this step was applied, re-run later"
        ),
    )

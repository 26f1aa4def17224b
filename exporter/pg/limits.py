"""Server-side time limits and read-only mode, set for one transaction only (they never outlive it in a pool)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql


def milliseconds(seconds: float) -> str:
    """A PostgreSQL duration setting; 0 means no limit."""
    return f"{round(seconds * 1000)}ms"


def set_local_limits(
    conn: psycopg.Connection[Any],
    *,
    lock_timeout: float,
    statement_timeout: float,
    idle_in_transaction_timeout: float | None = None,
    read_only: bool = False,
) -> None:
    """SET LOCAL the limits (and READ ONLY) in one round trip; call first thing in a transaction."""
    settings = [("lock_timeout", milliseconds(lock_timeout)), ("statement_timeout", milliseconds(statement_timeout))]
    if idle_in_transaction_timeout is not None:
        settings.append(("idle_in_transaction_session_timeout", milliseconds(idle_in_transaction_timeout)))
    if read_only:
        # Like SET TRANSACTION READ ONLY, but in the same statement as the limits; read-only may be set at any time.
        settings.append(("transaction_read_only", "on"))
    calls = sql.SQL(", ").join(
        sql.SQL("set_config({}, {}, true)").format(sql.Literal(name), sql.Literal(value)) for name, value in settings
    )
    conn.execute(sql.SQL("SELECT {}").format(calls))

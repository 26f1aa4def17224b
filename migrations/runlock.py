"""One run per table at a time: a session advisory lock, refused (never waited for) when taken."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from migrations.connect import POOL_REFUSAL, UsageError

# First key of the two-key advisory lock: "pk" in ASCII, so other applications' locks do not collide.
LOCK_CLASS = 0x706B


class RunInProgressError(Exception):
    """Another partkey-migrate run holds the table's lock."""


class TransactionPoolError(UsageError):
    """The run lock vanished between two statements: the connection goes through a transaction pool."""


def held_here(conn: psycopg.Connection[Any], key: str) -> bool:
    """Whether this statement's backend holds the run lock (it must, on a connection that keeps its session)."""
    row = conn.execute(
        """SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()
                  AND classid = %s AND objsubid = 2
                  AND objid::bigint = ((hashtext(%s)::bigint + 4294967296) %% 4294967296))""",
        (LOCK_CLASS, key),
    ).fetchone()
    return bool(row and row[0])


@contextmanager
def run_lock(conn: psycopg.Connection[Any], target: str) -> Iterator[None]:
    """Hold pg_advisory_lock(0x706B, hashtext(target)) for the run, or raise RunInProgressError."""
    key = f"partkey-migrate:{target}"
    row = conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (LOCK_CLASS, key)).fetchone()
    if not row or not row[0]:
        holder = conn.execute(
            """SELECT l.pid, coalesce(a.application_name, ''), coalesce(a.state, ''),
                      coalesce(to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS TZ'), '')
               FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
               WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objsubid = 2
                 AND l.objid::bigint = ((hashtext(%s)::bigint + 4294967296) %% 4294967296)""",
            (LOCK_CLASS, key),
        ).fetchone()
        who = (
            f" (backend pid {holder[0]}, {holder[1] or 'no application_name'}, {holder[2]}, connected {holder[3]})"
            if holder
            else ""
        )
        raise RunInProgressError(
            f"another partkey-migrate run is working on {target}{who}; wait for it to finish. If its client "
            "was killed, the server frees the lock when the backend ends (pg_terminate_backend(pid))"
        )
    if not held_here(conn, key):
        # The next statement ran on another server connection: a transaction pool, where the lock protects nothing.
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (LOCK_CLASS, key))
        raise TransactionPoolError(POOL_REFUSAL)
    try:
        yield
    finally:
        if not conn.closed:
            # A broken session cannot unlock, but the server drops its advisory locks with it.
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (LOCK_CLASS, key))

"""Open the one connection a run uses, tell a transaction pool from a session, and word failures without a password."""

from __future__ import annotations

import weakref
from typing import Any

import psycopg

from exporter.pg.connect import connect as open_connection
from exporter.pg.errors import database_error, error_lines
from exporter.pg.scrub import first_line, redact
from migrations.options import APPLICATION_NAME

__all__ = ["POOL_REFUSAL", "UsageError", "connect", "database_error", "error_lines", "pooled", "redact"]

CONNECT_TIMEOUT = 10.0
PROBE_NAME = f"{APPLICATION_NAME} pool probe"
POOL_REFUSAL = (
    "--dsn reaches PostgreSQL through a transaction (or statement) pool, where a run cannot keep its session "
    "(advisory lock, DDL in order): point --dsn at PostgreSQL or at a session-mode pool"
)

# Connections found to share their server connection with other clients (see shares_server).
_POOLED: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()


class UsageError(Exception):
    """A problem the user must fix in the command line or the environment (exit code 2)."""


def connect(dsn: str) -> psycopg.Connection[Any]:
    """An autocommit connection tagged application_name=partkey-migrate; UsageError on failure."""
    if not dsn:
        raise UsageError("no database given: pass --dsn or set PARTKEY_DSN")
    try:
        conn = _open(dsn)
    except psycopg.ProgrammingError as error:
        raise UsageError(f"invalid DSN: {first_line(redact(str(error), dsn))}") from None
    except psycopg.Error as error:
        raise UsageError(f"cannot connect to the database: {first_line(redact(str(error), dsn))}") from None
    try:
        if shares_server(conn, dsn):
            _POOLED.add(conn)
    except psycopg.Error as error:
        conn.close()
        raise UsageError(f"cannot connect to the database: {first_line(redact(str(error), dsn))}") from None
    if conn.info.server_version >= 140000 and not pooled(conn):
        # A killed client's backend would otherwise keep waiting for (or holding) locks and the run lock until
        # it next talks to the socket; with this it notices within a second, even during a lock wait.
        # A session setting, so never through a pool: it would stay on a server connection other clients get.
        conn.execute("SET client_connection_check_interval = '1s'")
    return conn


def pooled(conn: psycopg.Connection[Any]) -> bool:
    """Whether connect() found this connection behind a transaction or statement pool."""
    return conn in _POOLED


def shares_server(conn: psycopg.Connection[Any], dsn: str) -> bool:
    """Whether the server connection behind conn changes between its transactions (PgBouncer transaction mode).

    A second client pins a server connection in an open transaction; then conn asks for its backend pid again.
    Directly or through a session pool, conn keeps its own backend, so the probe never sees conn's pid and
    conn's pid never changes. Through a transaction pool the probe gets the server conn just released (PgBouncer
    reuses the last one first), or conn gets another one while the probe holds it. A statement pool refuses the
    probe's transaction. A direct connection (see direct) needs no probe: a run then opens one connection only.
    """
    before = _backend_pid(conn)
    if direct(conn, before):
        return False
    # Named apart from the run's own connection, so that it is not taken for the run in pg_stat_activity.
    with open_connection(dsn, application_name=PROBE_NAME, connect_timeout=CONNECT_TIMEOUT) as probe:
        try:
            with probe.transaction():
                theirs = _backend_pid(probe)
                after = _backend_pid(conn)
        except psycopg.OperationalError:
            return True  # "transaction blocks not allowed in statement pooling mode" and its kin
    return theirs == before or after != before


def direct(conn: psycopg.Connection[Any], backend_pid: int) -> bool:
    """Whether PostgreSQL itself answered conn's startup: then conn keeps its backend and needs no probe.

    The startup's BackendKeyData names the backend's pid only when PostgreSQL sent it; a pooler (PgBouncer in
    every pool mode, measured on 1.18) hands the client a random cancel key of its own instead.
    """
    return conn.info.backend_pid == backend_pid


def _open(dsn: str) -> psycopg.Connection[Any]:
    """A connection as partkey-migrate opens them."""
    return open_connection(dsn, application_name=APPLICATION_NAME, connect_timeout=CONNECT_TIMEOUT)


def _backend_pid(conn: psycopg.Connection[Any]) -> int:
    """The pid of the server process answering this statement (conn.info caches the first one)."""
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])

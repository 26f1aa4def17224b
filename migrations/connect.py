"""Open the one connection a run uses, and describe connection failures without leaking a password."""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from migrations.options import APPLICATION_NAME


class UsageError(Exception):
    """A problem the user must fix in the command line or the environment (exit code 2)."""


_PASSWORD_PATTERNS = (
    re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE),
    re.compile(r"(://[^:/@\s]*:)([^@\s]*)(@)"),
)


def redact(text: str, dsn: str | None = None) -> str:
    """Text with any password from the DSN (or any password=... / user:pw@) replaced by ***."""
    secret: str | None = None
    if dsn:
        try:
            secret = str(conninfo_to_dict(dsn).get("password") or "") or None
        except psycopg.Error:
            secret = None
    if secret:
        text = text.replace(secret, "***")
    text = _PASSWORD_PATTERNS[0].sub(r"\1***", text)
    return _PASSWORD_PATTERNS[1].sub(r"\1***\3", text)


def connect(dsn: str) -> psycopg.Connection[Any]:
    """An autocommit connection tagged application_name=partkey-migrate; UsageError on failure."""
    if not dsn:
        raise UsageError("no database given: pass --dsn or set PARTKEY_DSN")
    try:
        conn = psycopg.connect(dsn, autocommit=True, application_name=APPLICATION_NAME, connect_timeout=10)
    except psycopg.ProgrammingError as error:
        raise UsageError(f"invalid DSN: {_first_line(redact(str(error), dsn))}") from None
    except psycopg.Error as error:
        raise UsageError(f"cannot connect to the database: {_first_line(redact(str(error), dsn))}") from None
    if conn.info.server_version >= 140000:
        # A killed client's backend would otherwise keep waiting for (or holding) locks and the run lock until
        # it next talks to the socket; with this it notices within a second, even during a lock wait.
        conn.execute("SET client_connection_check_interval = '1s'")
    return conn


def _first_line(text: str) -> str:
    """The first non-empty line of an error message."""
    return next((line.strip() for line in text.splitlines() if line.strip()), text.strip())

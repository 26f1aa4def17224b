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


def database_error(error: psycopg.Error, dsn: str | None = None) -> dict[str, str | None]:
    """The server's message, SQLSTATE, DETAIL, HINT and CONTEXT of an error, any password scrubbed."""
    diag = error.diag
    primary = diag.message_primary or _first_line(str(error)) or type(error).__name__

    def clean(text: str | None) -> str | None:
        return redact(text.strip(), dsn) if text and text.strip() else None

    return {
        "message": clean(primary),
        "sqlstate": diag.sqlstate or error.sqlstate,
        "detail": clean(diag.message_detail),
        "hint": clean(diag.message_hint),
        "context": clean(diag.context),
    }


def error_lines(described: dict[str, str | None]) -> list[str]:
    """A described database error as the lines psql would show: message, then DETAIL, HINT, CONTEXT."""
    code = f" (SQLSTATE {described['sqlstate']})" if described.get("sqlstate") else ""
    lines = [f"database error: {described['message']}{code}"]
    for label in ("detail", "hint", "context"):
        text = described.get(label)
        if text:
            lines += [f"  {label.upper()}: {line}" for line in text.splitlines()]
    return lines

"""A database error as the server gave it: message, SQLSTATE, DETAIL, HINT and CONTEXT, with passwords scrubbed."""

from __future__ import annotations

import psycopg

from exporter.pg.connect import explain
from exporter.pg.scrub import first_line, redact


def database_error(error: psycopg.Error, dsn: str | None = None) -> dict[str, str | None]:
    """The server's message, SQLSTATE, DETAIL, HINT and CONTEXT of an error, any password scrubbed."""
    diag = error.diag
    primary = diag.message_primary or first_line(str(error)) or type(error).__name__

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


def failure_line(failure: psycopg.Error, statement_timeout: float, lock_timeout: float | None = None) -> str:
    """One line naming what failed, with the timeout that ended it and the server's SQLSTATE when there is one."""
    text = str(failure).strip()
    message = explain(text.splitlines()[0] if text else type(failure).__name__)
    state = getattr(failure, "sqlstate", None)
    if state == "57014":
        message = f"canceled after statement_timeout={statement_timeout:g}s: {message}"
    elif state == "55P03" and lock_timeout is not None:
        message = f"lock wait exceeded lock_timeout={lock_timeout:g}s: {message}"
    elif state == "42501":
        message = f"missing privilege: {message}"
    return f"{message} (SQLSTATE {state})" if state else message

"""A database error as the server gave it: message, SQLSTATE, DETAIL, HINT and CONTEXT, with passwords scrubbed."""

from __future__ import annotations

import psycopg

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

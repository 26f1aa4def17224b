"""Keep passwords out of logs, errors, reports and metrics."""

from __future__ import annotations

import re

from psycopg.conninfo import conninfo_to_dict

MASK = "***"

_PASSWORD_PATTERNS = (
    re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE),
    re.compile(r"(://[^:/@\s]*:)([^@\s]*)(@)"),
)


def dsn_password(dsn: str) -> str | None:
    """The password a DSN carries, if any (None for an unparseable DSN)."""
    try:
        value = conninfo_to_dict(dsn).get("password")
    except Exception:
        return None
    return str(value) if value else None


def scrub(text: str, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """Text with every given secret, and anything shaped like password=... or user:pw@, replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    text = _PASSWORD_PATTERNS[0].sub(rf"\1{MASK}", text)
    return _PASSWORD_PATTERNS[1].sub(rf"\1{MASK}\3", text)


def redact(text: str, dsn: str | None = None) -> str:
    """Text with the DSN's own password (and any password-shaped part) replaced by ***."""
    password = dsn_password(dsn) if dsn else None
    return scrub(text, [password] if password else [])


def first_line(text: str) -> str:
    """The first non-empty line of an error message."""
    return next((line.strip() for line in text.splitlines() if line.strip()), text.strip())

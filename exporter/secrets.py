"""Keep passwords out of logs, errors, reports and metrics."""

from __future__ import annotations

from psycopg.conninfo import conninfo_to_dict, make_conninfo


def dsn_password(dsn: str) -> str | None:
    """The password a DSN carries, if any."""
    try:
        value = conninfo_to_dict(dsn).get("password")
    except Exception:
        return None
    return str(value) if value else None


def redact_dsn(dsn: str) -> str:
    """The DSN with its password replaced by ***, fit for a log line."""
    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return "<unparseable dsn>"
    if params.get("password"):
        params["password"] = "***"  # noqa: S105 - the mask, not a password
    return make_conninfo(**params)  # type: ignore[arg-type]


def scrub(text: str, secrets: list[str]) -> str:
    """Replace every secret that appears in text with ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text

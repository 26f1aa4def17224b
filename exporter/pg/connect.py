"""Open a connection that is safe behind a transaction pool: no prepared statements, no session state."""

from __future__ import annotations

from typing import Any

import psycopg


def connect(
    dsn: str = "", *, application_name: str, connect_timeout: float, keepalives: bool = False, **params: Any
) -> psycopg.Connection[Any]:
    """An autocommit connection tagged with application_name, that never prepares statements.

    PgBouncer in transaction mode hands one server connection to many clients: a statement psycopg prepared
    (after its fifth run, by default) collides with another client's `_pg3_0` (SQLSTATE 42P05), so
    `prepare_threshold=None`. Our queries run a few times a minute, so preparing them would gain nothing.
    Nothing goes through the `options` startup parameter, which PgBouncer refuses by default; limits are set per
    transaction instead (`exporter.pg.limits`). `application_name` is a startup parameter PgBouncer passes on.
    `params` are more libpq parameters (host, dbname, ...), for a caller that has them apart rather than in a DSN.
    """
    extra: dict[str, Any] = dict(params)
    if keepalives:
        # A dead peer (a cut network, a killed pooler) is noticed in about a minute instead of hours.
        extra.update(keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3)
    conn = psycopg.connect(
        dsn,
        autocommit=True,
        prepare_threshold=None,
        application_name=application_name,
        connect_timeout=max(1, round(connect_timeout)),
        **extra,
    )
    return conn


# What PgBouncer says when a pool cannot serve us, and what the user can do about it.
_POOLER_HINTS = (
    (
        "transaction blocks not allowed in statement pooling mode",
        "PgBouncer's pool_mode=statement cannot run a transaction of several statements; point the DSN at a "
        "pool_mode=transaction or session pool, or at PostgreSQL",
    ),
    (
        "unsupported startup parameter",
        "the pooler refuses a startup parameter in the DSN; remove it (or list it in ignore_startup_parameters)",
    ),
)


def explain(message: str) -> str:
    """The message, followed by what to do when it is a pooler's refusal we know."""
    for words, hint in _POOLER_HINTS:
        if words in message and hint not in message:
            return f"{message} ({hint})"
    return message

"""Open a connection that is safe behind a transaction pool: no prepared statements, no session state."""

from __future__ import annotations

from typing import Any

import psycopg


def connect(
    dsn: str, *, application_name: str, connect_timeout: float, keepalives: bool = False
) -> psycopg.Connection[Any]:
    """An autocommit connection tagged with application_name, that never prepares statements.

    PgBouncer in transaction mode hands one server connection to many clients: a statement psycopg prepared
    (after its fifth run, by default) collides with another client's `_pg3_0` (SQLSTATE 42P05), so
    `prepare_threshold=None`. Our queries run a few times a minute, so preparing them would gain nothing.
    Nothing goes through the `options` startup parameter, which PgBouncer refuses by default; limits are set per
    transaction instead (`exporter.pg.limits`). `application_name` is a startup parameter PgBouncer passes on.
    """
    extra: dict[str, Any] = {}
    if keepalives:
        # A dead peer (a cut network, a killed pooler) is noticed in about a minute instead of hours.
        extra = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
    conn = psycopg.connect(
        dsn,
        autocommit=True,
        prepare_threshold=None,
        application_name=application_name,
        connect_timeout=max(1, round(connect_timeout)),
        **extra,
    )
    return conn

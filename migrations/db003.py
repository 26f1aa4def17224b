"""Library API for Alembic revisions and scripts: db003.upgrade(connection), db003.downgrade(connection).

`connection` is a psycopg 3 connection in autocommit mode, or a SQLAlchemy Connection on the
postgresql+psycopg driver inside Alembic's `op.get_context().autocommit_block()`: partkey-migrate runs
each step in its own transaction (VALIDATE must not share one with ADD CONSTRAINT), so it cannot run
inside the migration's transaction.
"""

from __future__ import annotations

from typing import Any

import psycopg

from exporter.keyspec import KeySpec
from migrations import runner
from migrations.errors import Outcome
from migrations.options import Options
from migrations.strategy import Requested
from migrations.verification import verify_full


def psycopg_connection(connection: Any) -> psycopg.Connection[Any]:
    """The psycopg connection behind a SQLAlchemy Connection (or the argument itself), in autocommit mode."""
    raw = connection
    if not isinstance(raw, psycopg.Connection):
        # SQLAlchemy Connection -> pooled DBAPI connection -> the driver's own connection object.
        raw = getattr(getattr(connection, "connection", None), "driver_connection", None)
    if not isinstance(raw, psycopg.Connection):
        raise TypeError("db003 needs a psycopg 3 connection or a SQLAlchemy postgresql+psycopg Connection")
    if not raw.autocommit:
        raise RuntimeError(
            "db003 runs each step in its own transaction: call it inside "
            "`with op.get_context().autocommit_block():` (Alembic) or on an autocommit psycopg connection"
        )
    return raw


def options_for(
    table: str = "chunks",
    schema: str = "public",
    key_column: str = "partition_key",
    source_column: str = "collection_id",
    modulus: int = 100,
    **limits: Any,
) -> Options:
    """Options for one table (defaults fit semantik's chunks); limits are Options fields."""
    spec = KeySpec(table=table, schema=schema, key_column=key_column, source_column=source_column, modulus=modulus)
    return Options(spec=spec, **limits)


def upgrade(connection: Any, *, strategy: Requested = "auto", options: Options | None = None) -> Outcome:
    """Run the DB-003 upgrade (resumable); raises RefusedError when it refuses, e.g. on wrong keys."""
    return runner.upgrade(psycopg_connection(connection), options or options_for(), strategy, out=_log)


def downgrade(connection: Any, *, options: Options | None = None) -> Outcome:
    """Back to the trigger (safe formula), PK and indexes as they were."""
    return runner.downgrade(psycopg_connection(connection), options or options_for(), out=_log)


def verify(connection: Any, *, options: Options | None = None) -> bool:
    """True when every row's key equals the safe formula."""
    conn = psycopg_connection(connection)
    opts = options or options_for()
    return verify_full(conn, opts, runner.inspect(conn, opts)).clean


def _log(line: str) -> None:
    """Library runs report through logging instead of stdout."""
    runner.log.info("%s", line)

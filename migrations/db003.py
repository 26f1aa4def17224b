"""Library API for Alembic revisions and scripts: db003.upgrade(connection), db003.downgrade(connection).

`connection` is an autocommit psycopg 3 connection, or a SQLAlchemy Connection on any PostgreSQL driver
(postgresql+psycopg, postgresql+psycopg2, postgresql+asyncpg through run_sync) inside Alembic's
`op.get_context().autocommit_block()`: partkey-migrate runs each step in its own transaction (VALIDATE must
not share one with ADD CONSTRAINT), so it cannot run inside the migration's transaction. On a psycopg 3
connection it works on that connection; on another driver it opens its own psycopg connection to the same
server, database and user for the run, and closes it after.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import pq

from exporter.keyspec import KeySpec
from exporter.pg.connect import connect
from exporter.pg.policy import Requested
from migrations import alembic as alembic_support
from migrations import runner
from migrations.connect import CONNECT_TIMEOUT
from migrations.errors import Outcome
from migrations.options import APPLICATION_NAME, Options
from migrations.verification import verify_full

NOT_AUTOCOMMIT = (
    "db003 runs each step in its own transaction: call it inside "
    "`with op.get_context().autocommit_block():` (Alembic) or on an autocommit psycopg connection"
)


def _dbapi_connection(connection: Any) -> Any:
    """The DBAPI connection behind a SQLAlchemy Connection (SQLAlchemy's adapter for asyncpg), else None."""
    fairy = getattr(connection, "connection", None)
    return getattr(fairy, "dbapi_connection", None)


def _libpq_params(connection: Any, driver: Any) -> dict[str, Any]:
    """Where the SQLAlchemy connection is connected: the driver's own parameters, else the engine's URL."""
    info = getattr(driver, "info", None)
    if info is not None and isinstance(getattr(info, "dsn_parameters", None), dict):
        # psycopg2: the parameters libpq actually used, whatever built the engine (URL, creator, connect_args).
        params: dict[str, Any] = dict(info.dsn_parameters)
        if getattr(info, "password", None):
            params["password"] = info.password
    else:
        url = connection.engine.url
        params = {k: v for k, v in url.translate_connect_args(database="dbname", username="user").items() if v}
        params.update({k: v for k, v in url.query.items() if isinstance(v, str)})
    known = {option.keyword.decode() for option in pq.Conninfo.get_defaults()}
    # Another libpq build may know other keywords; passing an unknown one would fail the connect.
    return {k: v for k, v in params.items() if k in known and k != "application_name"}


@contextmanager
def psycopg_connection(connection: Any) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit psycopg 3 connection for the run: the argument itself, its driver's, or a new one."""
    if isinstance(connection, psycopg.Connection):
        if not connection.autocommit:
            raise RuntimeError(NOT_AUTOCOMMIT)
        yield connection
        return
    dbapi = _dbapi_connection(connection)
    if dbapi is None or getattr(getattr(connection, "dialect", None), "name", None) != "postgresql":
        raise TypeError(
            "db003 needs an autocommit psycopg 3 connection or a SQLAlchemy Connection to PostgreSQL "
            f"(got {type(connection).__name__}); in Alembic pass op.get_bind()"
        )
    driver = getattr(getattr(connection, "connection", None), "driver_connection", None)
    if isinstance(driver, psycopg.Connection):
        if not driver.autocommit:
            raise RuntimeError(NOT_AUTOCOMMIT)
        yield driver
        return
    if not getattr(dbapi, "autocommit", False):
        raise RuntimeError(NOT_AUTOCOMMIT)
    params = _libpq_params(connection, driver)
    with connect(application_name=APPLICATION_NAME, connect_timeout=CONNECT_TIMEOUT, **params) as own:
        yield own


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
    alembic_support.check_context()
    with psycopg_connection(connection) as conn:
        return runner.upgrade(conn, options or options_for(), strategy, out=_log)


def downgrade(connection: Any, *, options: Options | None = None) -> Outcome:
    """Back to the trigger (safe formula), PK and indexes as they were."""
    alembic_support.check_context()
    with psycopg_connection(connection) as conn:
        return runner.downgrade(conn, options or options_for(), out=_log)


def verify(connection: Any, *, options: Options | None = None) -> bool:
    """True when every row's key equals the safe formula."""
    opts = options or options_for()
    with psycopg_connection(connection) as conn:
        return verify_full(conn, opts, runner.inspect(conn, opts)).clean


def _log(line: str) -> None:
    """Library runs report through logging instead of stdout."""
    runner.log.info("%s", line)

"""Alembic environment for the partkey-migrate example, with the settings a DB-003 revision needs."""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, create_engine, pool

from migrations.alembic import include_object

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)

# Any PostgreSQL driver works: postgresql+psycopg2://..., postgresql+psycopg://..., postgresql+asyncpg://...
URL = os.environ.get("PARTKEY_SQLALCHEMY_URL") or config.get_main_option("sqlalchemy.url") or ""

# Your application's MetaData for autogenerate (None here: the example has no models).
target_metadata = None


def run_migrations_offline() -> None:
    """`alembic upgrade --sql`: the DB-003 revision refuses in one line and names `partkey-migrate plan --sql`."""
    context.configure(url=URL, target_metadata=target_metadata, literal_binds=True, include_object=include_object)
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    """One transaction per revision; the DB-003 revision steps out of its own on purpose (autocommit_block)."""
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # Needed: with one transaction for all revisions, autocommit_block would commit earlier ones midway.
        transaction_per_migration=True,
        # Keeps autogenerate and `alembic check` from proposing to drop partkey_migration_state.
        include_object=include_object,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    """An async driver (postgresql+asyncpg): Alembic itself is synchronous, so it runs through run_sync."""
    from sqlalchemy.ext.asyncio import create_async_engine  # needs greenlet: pip install sqlalchemy[asyncio]

    engine = create_async_engine(URL, poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await engine.dispose()


def run_migrations_online() -> None:
    """Connect with the URL's driver and run the revisions."""
    if "+asyncpg" in URL.split("://", 1)[0]:
        asyncio.run(run_async_migrations())
        return
    engine = create_engine(URL, poolclass=pool.NullPool)
    with engine.connect() as connection:
        do_run_migrations(connection)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

"""Alembic environment for the partkey-migrate example: online mode only (the migration reads the catalog)."""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)

URL = os.environ.get("PARTKEY_SQLALCHEMY_URL") or config.get_main_option("sqlalchemy.url") or ""


def run_migrations_online() -> None:
    """One connection, one transaction per revision; the DB-003 revision steps out of it on purpose."""
    engine = create_engine(URL, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit(
        "this example needs a live database: partkey-migrate plans from the catalog. "
        "For an offline script use `partkey-migrate plan --sql`."
    )
run_migrations_online()

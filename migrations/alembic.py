"""Alembic support: the autogenerate filter for the state table, and the checks db003 makes before it runs."""

from __future__ import annotations

import logging
from typing import Any

from migrations.options import STATE_TABLE

log = logging.getLogger("partkey-migrate")

OFFLINE = (
    "partkey-migrate cannot run in Alembic's offline (--sql) mode: it plans from the live catalog and verifies the "
    "data first. Run `partkey-migrate plan --sql` against the database (or a copy) for a psql script instead"
)
ONE_TRANSACTION = (
    "Alembic runs every revision in one transaction (transaction_per_migration=False in env.py): the "
    "autocommit_block around db003 commits the revisions before this one midway, so a later failure cannot roll "
    "them back. Set context.configure(..., transaction_per_migration=True) in env.py"
)


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Alembic autogenerate filter: leave partkey-migrate's state table (and its index) out of the comparison."""
    if type_ == "table" and name == STATE_TABLE:
        return False
    table = getattr(obj, "table", None)
    return not (type_ in ("index", "unique_constraint", "column") and getattr(table, "name", None) == STATE_TABLE)


def _migration_context() -> Any | None:
    """Alembic's MigrationContext when called from a revision being run, else None."""
    try:
        from alembic import op
    except ImportError:  # pragma: no cover - Alembic is not installed: not called from a revision
        return None
    try:
        return op.get_context()
    except NameError:  # the op proxy is only set up while Alembic runs revisions
        return None


def check_context() -> None:
    """Inside Alembic: refuse offline mode in one line, and warn before anything runs in one-transaction mode."""
    context = _migration_context()
    if context is None:
        return
    if context.as_sql:
        from alembic.util import CommandError

        raise CommandError(OFFLINE)
    if not context.opts.get("transaction_per_migration", False):
        log.warning("%s", ONE_TRANSACTION)

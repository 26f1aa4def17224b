"""DB-003: replace the chunks partition-key trigger (partkey-migrate).

LIST-partitioned table: CHECK (partition_key = abs(hashtext(collection_id::text) % 100)) added NOT VALID,
VALIDATEd in its own transaction, then the trigger is dropped. Plain table on PG 12+: a STORED generated
column. See docs/migrate.md.

Revision ID: 0001_db003
Revises: (your current head)

To add this to an existing history: copy this file into your versions/ folder, set `down_revision` below to
your current head (`alembic heads` prints it) and, if you like, give `revision` a fresh id (`alembic revision`
makes one). env.py needs `transaction_per_migration=True` and `include_object=migrations.alembic.include_object`
(see examples/alembic/env.py and docs/migrate.md).
"""

from __future__ import annotations

from alembic import op

from migrations import db003

revision = "0001_db003"
down_revision = None  # PLACEHOLDER: set to your current head revision (`alembic heads`); None only in a new history
branch_labels = None
depends_on = None

# semantik's table; change these for yours.
OPTIONS = db003.options_for(table="chunks", key_column="partition_key", source_column="collection_id", modulus=100)


def upgrade() -> None:
    """Each step needs its own transaction (VALIDATE must not share one), so leave Alembic's."""
    with op.get_context().autocommit_block():
        db003.upgrade(op.get_bind(), options=OPTIONS)


def downgrade() -> None:
    """Back to the trigger, with the safe formula; PK and indexes as they were."""
    with op.get_context().autocommit_block():
        db003.downgrade(op.get_bind(), options=OPTIONS)

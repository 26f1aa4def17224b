"""DB-003: replace the chunks partition-key trigger (partkey-migrate).

LIST-partitioned table: CHECK (partition_key = abs(hashtext(collection_id::text) % 100)) added NOT VALID,
VALIDATEd in its own transaction, then the trigger is dropped. Plain table on PG 12+: a STORED generated
column. See docs/migrate.md.

Revision ID: 0001_db003
Revises:
"""

from __future__ import annotations

from alembic import op

from migrations import db003

revision = "0001_db003"
down_revision = None
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

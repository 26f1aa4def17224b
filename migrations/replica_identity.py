"""REPLICA IDENTITY USING INDEX on an index that DROP COLUMN of the key removes: named again in the swap.

DROP COLUMN drops the identity index with the column and leaves relreplident 'i' with no index flagged, which
logical decoding treats as REPLICA IDENTITY NOTHING: UPDATEs and DELETEs are published without their old key (and
a publication that publishes them refuses them). The swap puts the PK and indexes back under their old names, so
the identity can point at the same name again, in the same transaction.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from exporter.keyspec import KeySpec
from migrations.catalog import Dependent, table_oid


def identity_index(conn: psycopg.Connection[Any], spec: KeySpec, dependents: list[Dependent]) -> str | None:
    """The name the identity index has after the swap, when it is one of `dependents` (what DROP COLUMN removes)."""
    row = conn.execute(
        "SELECT i.relname, c.conname FROM pg_class t JOIN pg_index x ON x.indrelid = t.oid AND x.indisreplident "
        "JOIN pg_class i ON i.oid = x.indexrelid "
        "LEFT JOIN pg_constraint c ON c.conindid = x.indexrelid AND c.conrelid = t.oid "
        "WHERE t.oid = %s AND t.relreplident = 'i'",
        (table_oid(conn, spec),),
    ).fetchone()
    if row is None:
        return None
    index, constraint = str(row[0]), None if row[1] is None else str(row[1])
    for dependent in dependents:
        # A constraint comes back as ADD CONSTRAINT (USING INDEX), which names its index after the constraint.
        if (dependent.kind == "index" and dependent.name == index) or (
            dependent.kind == "constraint" and dependent.name == constraint
        ):
            return dependent.name
    return None


def restore(spec: KeySpec, index: str | None) -> list[sql.Composed]:
    """ALTER TABLE ... REPLICA IDENTITY USING INDEX, after the index is back; nothing when it was not removed."""
    if index is None:
        return []
    return [sql.SQL("ALTER TABLE {} REPLICA IDENTITY USING INDEX {}").format(spec.table_ident, sql.Identifier(index))]

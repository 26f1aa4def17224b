"""Replication around the column swap: REPLICA IDENTITY USING INDEX on a key index the swap rebuilds."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.migrations.helpers import catalog, cli, keys
from tests.schema import create_plain_table, insert_rows


def identity(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """The table's replica identity as the catalog has it: the setting, and each index with its flag."""
    return {
        "relreplident": conn.execute(
            "SELECT relreplident::text FROM pg_class WHERE oid = 'chunks'::regclass"
        ).fetchone(),
        "indexes": conn.execute(
            "SELECT i.relname, x.indisreplident, pg_get_indexdef(i.oid) FROM pg_index x "
            "JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = 'chunks'::regclass ORDER BY 1"
        ).fetchall(),
    }


@pytest.mark.versioned("partkey-migrate keeps REPLICA IDENTITY USING INDEX")
@pytest.mark.parametrize("backing", ["index", "constraint"])
def test_replica_identity_on_the_key_index_is_kept_through_upgrade_and_downgrade(
    conn: psycopg.Connection[Any], dsn: str, backing: str
) -> None:
    """The identity index contains the key, so DROP COLUMN removes it; the swap must name its rebuilt copy again.

    Before the fix the upgrade left relreplident 'i' with no index flagged (logical replication then sends no old
    key for UPDATE and DELETE, as with REPLICA IDENTITY NOTHING).
    """
    if conn.info.server_version < 120000:
        pytest.skip("no generated columns before PostgreSQL 12: the plain table keeps its trigger")
    create_plain_table(conn, modulus=10)
    insert_rows(conn, 300, modulus=10)
    conn.execute("ALTER TABLE chunks ALTER COLUMN partition_key SET NOT NULL")  # an identity index needs NOT NULL
    if backing == "index":
        conn.execute("CREATE UNIQUE INDEX chunks_id_key ON chunks (id, partition_key)")
    else:
        conn.execute("ALTER TABLE chunks ADD CONSTRAINT chunks_id_key UNIQUE (id, partition_key)")
    conn.execute("ALTER TABLE chunks REPLICA IDENTITY USING INDEX chunks_id_key")
    before, rows = identity(conn), keys(conn)
    assert before["relreplident"] == ("i",)
    assert ("chunks_id_key", True) in [(name, flag) for name, flag, _ in before["indexes"]]

    up = cli(dsn, "upgrade", "--strategy", "generated")
    assert up.code == 0, up.err
    assert catalog(conn)["columns"][-1] == ("partition_key", "integer", True, "s")  # the swap happened
    assert identity(conn) == before
    down = cli(dsn, "downgrade")
    assert down.code == 0, down.err
    assert catalog(conn)["columns"][-1] == ("partition_key", "integer", True, "")
    assert identity(conn) == before
    assert keys(conn) == rows

"""The key column's dependents: listed, carried across the swap exactly, or refused up front (issue 14, 7)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import psycopg
import pytest

from tests.migrations.helpers import catalog, cli, keys, state
from tests.schema import create_plain_table, insert_rows


def dependents_snapshot(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Per kind, what the catalog says about the key column's dependents."""
    attnum = "(SELECT attnum FROM pg_attribute WHERE attrelid = 'chunks'::regclass AND attname = 'partition_key')"
    return {
        "column privileges": conn.execute(
            "SELECT a.privilege_type, a.grantee::regrole::text, a.is_grantable FROM pg_attribute t, "
            f"aclexplode(t.attacl) a WHERE t.attrelid = 'chunks'::regclass AND t.attnum = {attnum} ORDER BY 1, 2"
        ).fetchall(),
        "comment": conn.execute(f"SELECT col_description('chunks'::regclass, {attnum})").fetchone(),
        "statistics target": conn.execute(
            f"SELECT attstattarget FROM pg_attribute WHERE attrelid = 'chunks'::regclass AND attnum = {attnum}"
        ).fetchone(),
        "table privileges": conn.execute("SELECT relacl::text FROM pg_class WHERE oid = 'chunks'::regclass").fetchone(),
    }


@pytest.fixture
def plain_table(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """Plain table with the legacy trigger, 300 rows, and two roles to grant to."""
    create_plain_table(conn, modulus=10)
    insert_rows(conn, 300, modulus=10)
    for role in ("partkey_reader", "partkey_auditor"):
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(f"CREATE ROLE {role}")
    return conn


@pytest.fixture(autouse=True)
def drop_roles(admin_dsn: str) -> Any:
    """Roles are cluster-wide: remove them after the test (its database is dropped first)."""
    yield
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        for role in ("partkey_reader", "partkey_auditor"):
            # A role that still holds privileges in a database not dropped yet stays: DROP ROLE IF EXISTS above.
            with contextlib.suppress(psycopg.errors.DependentObjectsStillExist):
                admin.execute(f"DROP ROLE IF EXISTS {role}")


def test_views_policies_statistics_and_publications_are_refused_up_front(
    plain_table: psycopg.Connection[Any], dsn: str
) -> None:
    conn = plain_table
    conn.execute("CREATE VIEW chunk_keys AS SELECT id, partition_key FROM chunks")
    conn.execute("CREATE MATERIALIZED VIEW chunk_key_counts AS SELECT partition_key, count(*) FROM chunks GROUP BY 1")
    conn.execute("ALTER TABLE chunks ENABLE ROW LEVEL SECURITY")
    conn.execute("CREATE POLICY only_low_keys ON chunks USING (partition_key < 5)")
    conn.execute("CREATE STATISTICS chunks_key_stats (dependencies) ON collection_id, partition_key FROM chunks")
    if conn.info.server_version >= 150000:
        conn.execute("CREATE PUBLICATION chunk_keys_pub FOR TABLE chunks (id, partition_key)")
    before, rows = catalog(conn), keys(conn)

    plan = cli(dsn, "plan", "--json", "--strategy", "generated")
    assert plan.code == 1
    status = json.loads(cli(dsn, "status", "--json").out)
    kinds = {d["kind"] for d in status["key_column_dependents"]}
    assert {"view", "materialized view", "policy", "extended statistics"} <= kinds
    run = cli(dsn, "upgrade")

    assert run.code == 1
    for expected in (
        "view chunk_keys",
        "materialized view chunk_key_counts",
        "policy only_low_keys on table chunks",
        "statistics object chunks_key_stats",
        "Nothing was changed",
    ):
        assert expected in run.err, run.err
    if conn.info.server_version >= 150000:
        assert "in publication chunk_keys_pub" in run.err
    assert "pre-verification" not in run.out  # refused before even the scan, let alone the rewrite
    assert catalog(conn) == before and keys(conn) == rows
    assert state(conn) is None


def test_privileges_comment_and_statistics_target_are_carried_both_ways(
    plain_table: psycopg.Connection[Any], dsn: str
) -> None:
    conn = plain_table
    conn.execute("GRANT SELECT (partition_key) ON chunks TO partkey_reader")
    conn.execute("GRANT SELECT (partition_key), UPDATE (partition_key) ON chunks TO partkey_auditor WITH GRANT OPTION")
    conn.execute("GRANT SELECT ON chunks TO partkey_reader")
    conn.execute("COMMENT ON COLUMN chunks.partition_key IS 'abs(hashtext(collection_id) % 10), it''s routed on'")
    conn.execute("ALTER TABLE chunks ALTER COLUMN partition_key SET STATISTICS 321")
    before, rows = dependents_snapshot(conn), keys(conn)
    assert before["column privileges"] and before["comment"] and before["statistics target"] == (321,)

    plan = json.loads(cli(dsn, "plan", "--json").out)
    assert {d["kind"] for d in plan["key_column_dependents"]} == {
        "column privilege",
        "comment",
        "statistics target",
    }
    assert all(d["carried"] for d in plan["key_column_dependents"])
    up = cli(dsn, "upgrade")
    assert up.code == 0, up.err
    assert catalog(conn)["columns"][-1][-1] == "s"  # the key is now a STORED generated column
    assert dependents_snapshot(conn) == before

    down = cli(dsn, "downgrade")
    assert down.code == 0, down.err
    assert dependents_snapshot(conn) == before
    assert keys(conn) == rows

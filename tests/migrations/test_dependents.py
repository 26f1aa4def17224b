"""The key column's dependents: listed, carried across the swap exactly, or refused up front (issue 14, 7)."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import psycopg
import pytest

from tests.migrations.helpers import catalog, cli, keys, state
from tests.schema import create_plain_table, insert_rows

# Roles belong to the whole server, which other test processes may share: names of this process's own.
READER, AUDITOR, OWNER = (f"partkey_{role}_{os.getpid()}" for role in ("reader", "auditor", "owner"))
ROLES = (READER, AUDITOR, OWNER)


def acl(conn: psycopg.Connection[Any], query: str) -> list[tuple[Any, ...]]:
    """aclexplode of the aclitem[] the query returns: (privilege, grantor, grantee, grantable), sorted."""
    return conn.execute(
        "SELECT a.privilege_type, a.grantor::regrole::text, "
        "CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END, a.is_grantable "
        f"FROM aclexplode(NULLIF(({query}), '{{}}'::aclitem[])) a ORDER BY 1, 2, 3"
    ).fetchall()


def dependents_snapshot(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Per kind, what the catalog says about the key column's dependents (grantors included)."""
    attnum = "(SELECT attnum FROM pg_attribute WHERE attrelid = 'chunks'::regclass AND attname = 'partition_key')"
    return {
        "column privileges": acl(
            conn, f"SELECT attacl FROM pg_attribute WHERE attrelid = 'chunks'::regclass AND attnum = {attnum}"
        ),
        "comment": conn.execute(f"SELECT col_description('chunks'::regclass, {attnum})").fetchone(),
        "statistics target": conn.execute(
            f"SELECT attstattarget FROM pg_attribute WHERE attrelid = 'chunks'::regclass AND attnum = {attnum}"
        ).fetchone(),
        "table privileges": conn.execute("SELECT relacl::text FROM pg_class WHERE oid = 'chunks'::regclass").fetchone(),
    }


def populated(conn: psycopg.Connection[Any], name: str) -> bool:
    """False for a materialized view created or left WITH NO DATA."""
    return bool(conn.execute("SELECT relispopulated FROM pg_class WHERE oid = %s::regclass", (name,)).fetchone()[0])  # type: ignore[index]


def objects_snapshot(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Views, materialized views, policies, statistics objects and publications as the catalog describes them."""
    snapshot: dict[str, Any] = {}
    for (name,) in conn.execute(
        "SELECT relname FROM pg_class WHERE relkind IN ('v', 'm') AND relnamespace = 'public'::regnamespace ORDER BY 1"
    ).fetchall():
        snapshot[f"relation {name}"] = (
            conn.execute(
                "SELECT relkind, pg_get_viewdef(oid), reloptions, relowner::regrole::text, relispopulated, "
                "obj_description(oid, 'pg_class') FROM pg_class WHERE oid = %s::regclass",
                (name,),
            ).fetchone(),
            acl(conn, f"SELECT relacl FROM pg_class WHERE oid = '{name}'::regclass"),
            conn.execute(
                "SELECT attname, col_description(attrelid, attnum), attacl::text FROM pg_attribute "
                "WHERE attrelid = %s::regclass AND attnum > 0 ORDER BY attnum",
                (name,),
            ).fetchall(),
            conn.execute(
                "SELECT pg_get_indexdef(indexrelid), obj_description(indexrelid, 'pg_class') FROM pg_index "
                "WHERE indrelid = %s::regclass ORDER BY 1",
                (name,),
            ).fetchall(),
            # The same rows (a materialized view WITH NO DATA cannot be read: it stays unpopulated).
            conn.execute(f"SELECT * FROM {name} ORDER BY 1").fetchall() if populated(conn, name) else None,
        )
    snapshot["policies"] = conn.execute(
        "SELECT p.policyname, p.permissive, p.roles::text, p.cmd, p.qual, p.with_check, "
        "obj_description(x.oid, 'pg_policy') FROM pg_policies p JOIN pg_policy x ON x.polname = p.policyname "
        "WHERE p.tablename = 'chunks' ORDER BY 1"
    ).fetchall()
    snapshot["row security"] = conn.execute(
        "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = 'chunks'::regclass"
    ).fetchone()
    target = "stxstattarget" if conn.info.server_version >= 130000 else "NULL"
    snapshot["statistics"] = conn.execute(
        f"SELECT pg_get_statisticsobjdef(oid), stxowner::regrole::text, {target}, "
        "obj_description(oid, 'pg_statistic_ext') FROM pg_statistic_ext ORDER BY 1"
    ).fetchall()
    if conn.info.server_version >= 150000:
        snapshot["publications"] = conn.execute(
            "SELECT pubname, ARRAY(SELECT unnest(attnames) ORDER BY 1), rowfilter FROM pg_publication_tables ORDER BY 1"
        ).fetchall()
    else:
        snapshot["publications"] = conn.execute(
            "SELECT pubname, tablename FROM pg_publication_tables ORDER BY 1"
        ).fetchall()
    return snapshot


@pytest.fixture
def plain_table(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """Plain table with the legacy trigger, 300 rows, and two roles to grant to."""
    create_plain_table(conn, modulus=10)
    insert_rows(conn, 300, modulus=10)
    for role in ROLES:
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(f"CREATE ROLE {role}")
    return conn


@pytest.fixture(autouse=True)
def drop_roles(admin_dsn: str) -> Any:
    """Roles are cluster-wide: remove them after the test (its database is dropped first)."""
    yield
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        for role in ROLES:
            # A role that still holds privileges in a database not dropped yet stays: DROP ROLE IF EXISTS above.
            with contextlib.suppress(psycopg.errors.DependentObjectsStillExist):
                admin.execute(f"DROP ROLE IF EXISTS {role}")


def needs_generated(conn: psycopg.Connection[Any]) -> None:
    """The column swap exists on PG 12+ (PG 11 keeps the trigger and never touches the column)."""
    if conn.info.server_version < 120000:
        pytest.skip("no generated columns before PostgreSQL 12: the plain table keeps its trigger")


# The key column's dependents, the objects on the column, and every row's key.
Carried = tuple[dict[str, Any], dict[str, Any], dict[int, tuple[str, int, str]]]


def carried(conn: psycopg.Connection[Any]) -> Carried:
    """What the swap must carry: the column's dependents, the objects on it, and every row's key."""
    return dependents_snapshot(conn), objects_snapshot(conn), keys(conn)


def assert_carried_both_ways(conn: psycopg.Connection[Any], dsn: str, before: Carried, *options: str) -> None:
    """upgrade (with options) swaps the key to a generated column, downgrade swaps it back; both keep `before`."""
    steps: list[tuple[tuple[str, ...], str]] = [(("upgrade", *options), "s"), (("downgrade",), "")]
    for command, generated in steps:
        run = cli(dsn, *command)
        assert run.code == 0, run.err
        assert catalog(conn)["columns"][-1] == ("partition_key", "integer", False, generated)  # the swap happened
        assert carried(conn) == before


@pytest.mark.versioned("partkey-migrate carries the key column's dependents")
def test_views_matviews_policies_statistics_and_publications_are_carried_both_ways(
    plain_table: psycopg.Connection[Any], dsn: str
) -> None:
    conn = plain_table
    needs_generated(conn)
    conn.execute(f"ALTER TABLE chunks OWNER TO {OWNER}")
    conn.execute(
        "CREATE VIEW chunk_keys WITH (security_barrier) AS SELECT id, partition_key AS key FROM chunks "
        "WHERE partition_key < 5 WITH LOCAL CHECK OPTION"
    )
    conn.execute(f"ALTER VIEW chunk_keys OWNER TO {OWNER}")
    conn.execute(f"GRANT SELECT ON chunk_keys TO {READER} WITH GRANT OPTION")
    conn.execute(f"GRANT SELECT (key) ON chunk_keys TO {AUDITOR}")
    conn.execute("COMMENT ON VIEW chunk_keys IS 'low keys'")
    conn.execute("COMMENT ON COLUMN chunk_keys.key IS 'the routing key'")
    conn.execute(
        "CREATE MATERIALIZED VIEW chunk_key_counts WITH (fillfactor = 70) AS "
        "SELECT partition_key, count(*) AS n FROM chunks GROUP BY 1"
    )
    conn.execute("CREATE UNIQUE INDEX chunk_key_counts_key ON chunk_key_counts (partition_key)")
    conn.execute("COMMENT ON INDEX chunk_key_counts_key IS 'for REFRESH CONCURRENTLY'")
    conn.execute(f"GRANT SELECT ON chunk_key_counts TO {READER}")
    conn.execute("CREATE MATERIALIZED VIEW chunk_keys_empty AS SELECT DISTINCT partition_key FROM chunks WITH NO DATA")
    conn.execute("ALTER TABLE chunks ENABLE ROW LEVEL SECURITY")
    conn.execute(
        f"CREATE POLICY low_keys ON chunks AS RESTRICTIVE FOR UPDATE TO {READER}, {AUDITOR} "
        "USING (partition_key < 5) WITH CHECK (partition_key < abs(hashtext('x') % 7))"
    )
    conn.execute("CREATE POLICY everyone ON chunks USING (partition_key IS NOT NULL)")
    conn.execute("COMMENT ON POLICY low_keys ON chunks IS 'only the low half'")
    conn.execute("CREATE STATISTICS chunks_key_stats (dependencies) ON collection_id, partition_key FROM chunks")
    conn.execute("COMMENT ON STATISTICS chunks_key_stats IS 'key follows the collection'")
    if conn.info.server_version >= 130000:
        conn.execute("ALTER STATISTICS chunks_key_stats SET STATISTICS 200")
    if conn.info.server_version >= 150000:
        # PG 15-17 refuse a generated column in a column list (the refusal test below): list it on 18 only.
        listed_columns = "id, partition_key" if conn.info.server_version >= 180000 else "id, collection_id"
        conn.execute(
            f"CREATE PUBLICATION chunk_keys_pub FOR TABLE chunks ({listed_columns}) WHERE (partition_key < 8) "
            # A row filter on a column outside the replica identity makes the server refuse UPDATEs that
            # are published, the downgrade's backfill too: publish inserts only, as such a publication must.
            "WITH (publish = 'insert')"
        )
    else:
        conn.execute("CREATE PUBLICATION chunk_keys_pub FOR TABLE chunks")  # no column lists before 15
    before = carried(conn)
    assert before[1]["relation chunk_keys"][-1] and before[1]["relation chunk_key_counts"][-1]  # both return rows

    plan = json.loads(cli(dsn, "plan", "--json", "--strategy", "generated").out)
    listed = {(d["kind"], d["name"]): d for d in plan["key_column_dependents"]}
    assert all(d["carried"] for d in listed.values()), listed
    assert {"view", "materialized view", "policy", "extended statistics"} <= {kind for kind, _ in listed}
    assert "REFRESHed" in listed[("materialized view", "materialized view chunk_key_counts")]["action"]
    assert "WITH NO DATA" in listed[("materialized view", "materialized view chunk_keys_empty")]["action"]
    if conn.info.server_version >= 150000:
        assert ("publication", f"publication chunk_keys_pub: table chunks ({listed_columns})") in listed
    status = json.loads(cli(dsn, "status", "--json").out)
    assert {d["name"] for d in status["key_column_dependents"]} == {name for _, name in listed}
    assert_carried_both_ways(conn, dsn, before, "--strategy", "generated")


@pytest.mark.versioned("partkey-migrate carries the key column's dependents")
def test_view_chains_triggers_and_rules_on_the_column_are_refused_up_front_by_name(
    plain_table: psycopg.Connection[Any], dsn: str
) -> None:
    conn = plain_table
    needs_generated(conn)
    conn.execute("CREATE VIEW chunk_keys AS SELECT id, partition_key FROM chunks")
    conn.execute("CREATE VIEW chunk_keys_low AS SELECT * FROM chunk_keys WHERE partition_key < 5")
    conn.execute("CREATE FUNCTION audit_key() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'")
    conn.execute(
        "CREATE TRIGGER audit_key BEFORE UPDATE OF partition_key ON chunks FOR EACH ROW EXECUTE PROCEDURE audit_key()"
    )
    conn.execute("CREATE RULE no_negative_keys AS ON UPDATE TO chunks WHERE NEW.partition_key < 0 DO INSTEAD NOTHING")
    conn.execute("CREATE POLICY carried_anyway ON chunks USING (partition_key < 5)")  # carried: not named
    refused = 3
    if conn.info.server_version >= 150000:
        conn.execute("CREATE PUBLICATION chunk_keys_pub FOR TABLE chunks (id, partition_key)")
        refused += conn.info.server_version < 180000  # 18 allows a generated column in a column list
    before, rows = catalog(conn), keys(conn)
    plan = cli(dsn, "plan", "--json", "--strategy", "generated")
    assert plan.code == 1
    run = cli(dsn, "upgrade", "--strategy", "generated")

    assert run.code == 1
    for expected in (
        f"{refused} object(s) depend on public.chunks.partition_key and cannot be carried",
        "view chunk_keys (view chunk_keys_low depends on it; chains of views",
        "trigger audit_key on table chunks (names the column; triggers are not carried)",
        "rule no_negative_keys on table chunks (names the column; rules are not carried)",
        "Nothing was changed",
    ):
        assert expected in run.err, run.err
    assert "carried_anyway" not in run.err
    if refused == 4:
        assert (
            "publication chunk_keys_pub: table chunks (id, partition_key) (PostgreSQL 15-17 refuse a generated "
            "column in a publication column list (18 allows it)"
        ) in run.err, run.err
    else:
        assert "chunk_keys_pub" not in run.err
    assert "pre-verification" not in run.out  # refused before even the scan, let alone the rewrite
    assert catalog(conn) == before and keys(conn) == rows
    assert state(conn) is None


@pytest.mark.versioned("partkey-migrate carries the key column's dependents")
def test_grants_keep_their_grantor_through_upgrade_and_downgrade(
    plain_table: psycopg.Connection[Any], dsn: str
) -> None:
    conn = plain_table
    needs_generated(conn)
    conn.execute(f"ALTER TABLE chunks OWNER TO {OWNER}")
    conn.execute("CREATE VIEW chunk_keys AS SELECT id, partition_key FROM chunks")
    conn.execute(f"ALTER VIEW chunk_keys OWNER TO {OWNER}")
    conn.execute(f"SET ROLE {OWNER}")
    conn.execute(f"GRANT SELECT (partition_key), UPDATE (partition_key) ON chunks TO {READER} WITH GRANT OPTION")
    conn.execute(f"GRANT SELECT ON chunk_keys TO {READER} WITH GRANT OPTION")
    conn.execute(f"REVOKE UPDATE ON chunk_keys FROM {OWNER}")  # the owner's own entry is not the default
    conn.execute(f"SET ROLE {READER}")
    conn.execute(f"GRANT SELECT (partition_key) ON chunks TO {AUDITOR}")  # grantor: the reader
    conn.execute(f"GRANT SELECT ON chunk_keys TO {AUDITOR}")
    conn.execute("RESET ROLE")
    before = carried(conn)
    grantors = {(grantee, grantor) for _, grantor, grantee, _ in before[0]["column privileges"]}
    assert grantors == {(READER, OWNER), (AUDITOR, READER)}

    plan = json.loads(cli(dsn, "plan", "--json", "--strategy", "generated").out)
    privileges = [d for d in plan["key_column_dependents"] if d["kind"] == "column privilege"]
    assert f"SELECT to {AUDITOR} (granted by {READER})" in privileges[0]["name"]
    assert_carried_both_ways(conn, dsn, before, "--strategy", "generated")  # grantors included


@pytest.mark.versioned("partkey-migrate carries the key column's dependents")
def test_privileges_comment_and_statistics_target_are_carried_both_ways(
    plain_table: psycopg.Connection[Any], dsn: str
) -> None:
    conn = plain_table
    needs_generated(conn)
    conn.execute(f"GRANT SELECT (partition_key) ON chunks TO {READER}")
    conn.execute(f"GRANT SELECT (partition_key), UPDATE (partition_key) ON chunks TO {AUDITOR} WITH GRANT OPTION")
    conn.execute(f"GRANT SELECT ON chunks TO {READER}")
    conn.execute("COMMENT ON COLUMN chunks.partition_key IS 'abs(hashtext(collection_id) % 10), it''s routed on'")
    conn.execute("ALTER TABLE chunks ALTER COLUMN partition_key SET STATISTICS 321")
    before = carried(conn)
    columns = before[0]
    assert columns["column privileges"] and columns["comment"] and columns["statistics target"] == (321,)

    plan = json.loads(cli(dsn, "plan", "--json").out)
    assert {d["kind"] for d in plan["key_column_dependents"]} == {
        "column privilege",
        "comment",
        "statistics target",
    }
    assert all(d["carried"] for d in plan["key_column_dependents"])
    assert_carried_both_ways(conn, dsn, before)

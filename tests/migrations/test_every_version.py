"""Every partkey-migrate strategy on the server at hand: upgrade, verify, downgrade, upgrade again.

`make test-matrix` runs this module on PostgreSQL 11-18; each test records what the commands did (`does`), and
the README's "what each command does" table is built from those records.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from exporter.introspect import detect
from exporter.keyspec import KeySpec
from tests.migrations.helpers import Run, catalog, cli, keys, state
from tests.migrations.test_generated_strategy import create_plain
from tests.schema import INT_MIN_COLLECTION_ID, create_list_table, insert_rows

pytestmark = pytest.mark.versioned("partkey-migrate strategies")

Does = Callable[[str, str], None]
SPEC = KeySpec(modulus=10)
GENERATED_NEEDS_12 = "GENERATED columns need PostgreSQL 12 (this server is 11."


def _major(conn: psycopg.Connection[Any]) -> int:
    return conn.info.server_version // 10000


def _ok(run: Run) -> Run:
    assert run.code == 0, f"exit {run.code}\nstdout:\n{run.out}\nstderr:\n{run.err}"
    return run


def _trigger_place(conn: psycopg.Connection[Any]) -> str:
    """Where the key trigger is now, as the exporter's detection says it."""
    impl = detect(conn, SPEC)
    if impl.trigger_location == "partitions":
        return f"trigger on each of {impl.partition_count} partitions"
    if impl.trigger_location == "parent":
        return "trigger on the parent"
    return "no trigger"


def _list_table(conn: psycopg.Connection[Any]) -> None:
    """semantik's shape: LIST by key with the legacy trigger where this version allows it."""
    create_list_table(conn, modulus=10, trigger="parent" if _major(conn) >= 13 else "partitions")
    insert_rows(conn, 1000, modulus=10)


def _insert_int_min(conn: psycopg.Connection[Any], supply_key: bool) -> int:
    """Insert the id whose hashtext is INT_MIN; return the key it was stored with."""
    if supply_key:
        sql = "INSERT INTO chunks (collection_id, partition_key) VALUES (%s, 8) RETURNING partition_key"
    else:
        sql = "INSERT INTO chunks (collection_id) VALUES (%s) RETURNING partition_key"
    row = conn.execute(sql, (INT_MIN_COLLECTION_ID,)).fetchone()
    assert row is not None
    return int(row[0])


def test_list_table_auto_is_check_and_round_trips(conn: psycopg.Connection[Any], dsn: str, does: Does) -> None:
    _list_table(conn)
    rows, before = keys(conn), catalog(conn)
    where_before = _trigger_place(conn)
    assert where_before == ("trigger on the parent" if _major(conn) >= 13 else "trigger on each of 10 partitions")

    up = _ok(cli(dsn, "upgrade"))
    upgraded = catalog(conn)
    assert "upgrade finished: state upgraded" in up.out
    assert upgraded["triggers"] == [] and "chunks_partition_key_check:true" in upgraded["constraints"]
    assert keys(conn) == rows and upgraded["indexes"] == before["indexes"]
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO chunks (collection_id, partition_key) VALUES (%s, 7)", (INT_MIN_COLLECTION_ID,))
    assert _insert_int_min(conn, supply_key=True) == 8
    conn.execute("DELETE FROM chunks WHERE collection_id = %s", (INT_MIN_COLLECTION_ID,))
    does("`partkey-migrate upgrade`, LIST table", f"check: CHECK validated, {where_before} dropped")

    verified = cli(dsn, "verify")
    assert verified.code == 0 and "wrong keys found" not in verified.out
    does("`partkey-migrate verify`", "exit 0: no wrong, NULL or erroring keys")

    _ok(cli(dsn, "downgrade", "--keep-safe-formula"))
    downgraded = catalog(conn)
    assert downgraded["triggers"] == before["triggers"] and downgraded["constraints"] == before["constraints"]
    assert downgraded["indexes"] == before["indexes"] and keys(conn) == rows
    function = dict(downgraded["functions"])["compute_partition_key"]
    assert "% 10)" in function  # the safe formula, not the legacy one
    does("`partkey-migrate downgrade`, LIST table", f"CHECK dropped, {_trigger_place(conn)} (safe formula)")

    _ok(cli(dsn, "upgrade"))
    assert catalog(conn) == upgraded and keys(conn) == rows


def _key_functions(conn: psycopg.Connection[Any]) -> list[str]:
    """pg_get_functiondef of every user trigger function on chunks, as the server prints it."""
    rows = conn.execute(
        "SELECT pg_get_functiondef(t.tgfoid) FROM pg_trigger t"
        " WHERE t.tgrelid = 'chunks'::regclass AND NOT t.tgisinternal ORDER BY t.tgname"
    ).fetchall()
    return [str(row[0]) for row in rows]


def test_plain_table_auto_round_trips(conn: psycopg.Connection[Any], dsn: str, does: Does) -> None:
    create_plain(conn, rows=1000)
    rows, before, functions_before = keys(conn), catalog(conn), _key_functions(conn)
    up = _ok(cli(dsn, "upgrade"))
    if _major(conn) < 12:
        # PG 11 has no generated columns: the tool keeps the trigger, fixes its formula and says why, once.
        assert f"partkey-migrate: {GENERATED_NEEDS_12}" in up.err
        assert up.err.count(GENERATED_NEEDS_12) == 1
        assert "upgrade finished: state kept-trigger" in up.out
        assert state(conn) == ("kept-trigger", ["fix-trigger"])
        assert catalog(conn)["triggers"] == before["triggers"] and keys(conn) == rows
        assert _insert_int_min(conn, supply_key=False) == 8
        does("`partkey-migrate upgrade`, plain table", "kept-trigger: formula fixed, logs why (no GENERATED)")
        refused = cli(dsn, "upgrade", "--strategy", "generated")
        assert refused.code == 1 and "strategy generated needs PostgreSQL 12+" in refused.err
        down = _ok(cli(dsn, "downgrade"))
        # The trigger stayed; downgrade puts its function back byte for byte, overflowing formula and all.
        assert "downgrade finished: state downgraded" in down.out
        assert catalog(conn)["triggers"] == before["triggers"] and _key_functions(conn) == functions_before
        does("`partkey-migrate downgrade`, plain table", "trigger stayed; its function restored as captured")
        return
    upgraded = catalog(conn)
    assert upgraded["columns"][-1] == ("partition_key", "integer", True, "s")
    assert upgraded["triggers"] == [] and upgraded["indexes"] == before["indexes"] and keys(conn) == rows
    assert _insert_int_min(conn, supply_key=False) == 8
    conn.execute("DELETE FROM chunks WHERE collection_id = %s", (INT_MIN_COLLECTION_ID,))
    does("`partkey-migrate upgrade`, plain table", "generated: STORED column swapped in, trigger dropped")
    assert cli(dsn, "verify").code == 0

    _ok(cli(dsn, "downgrade"))
    downgraded = catalog(conn)
    assert downgraded["triggers"] == before["triggers"] and downgraded["indexes"] == before["indexes"]
    assert keys(conn) == rows
    does("`partkey-migrate downgrade`, plain table", "plain column back (online backfill), trigger re-created")

    _ok(cli(dsn, "upgrade"))
    assert catalog(conn) == upgraded and keys(conn) == rows


@pytest.mark.parametrize("shape", ["list", "plain"])
def test_keep_trigger_fixes_the_formula_and_round_trips(
    conn: psycopg.Connection[Any], dsn: str, does: Does, shape: str
) -> None:
    if shape == "list":
        _list_table(conn)
    else:
        create_plain(conn, rows=1000)
    rows, before = keys(conn), catalog(conn)
    assert detect(conn, SPEC).formula_overflow
    up = _ok(cli(dsn, "upgrade", "--strategy", "keep-trigger"))
    assert "upgrade finished: state kept-trigger" in up.out
    after = catalog(conn)
    assert after["triggers"] == before["triggers"] and keys(conn) == rows
    assert not detect(conn, SPEC).formula_overflow
    assert _insert_int_min(conn, supply_key=shape == "list") == 8
    conn.execute("DELETE FROM chunks WHERE collection_id = %s", (INT_MIN_COLLECTION_ID,))
    assert cli(dsn, "verify").code == 0
    does(f"`partkey-migrate upgrade --strategy keep-trigger`, {shape} table", f"formula fixed, {_trigger_place(conn)}")
    _ok(cli(dsn, "downgrade", "--keep-safe-formula"))
    assert catalog(conn) == after
    _ok(cli(dsn, "upgrade", "--strategy", "keep-trigger"))
    assert catalog(conn) == after and keys(conn) == rows


def test_generated_on_a_list_table_is_refused_with_the_reason(
    conn: psycopg.Connection[Any], dsn: str, does: Does
) -> None:
    _list_table(conn)
    before = catalog(conn)
    refused = cli(dsn, "upgrade", "--strategy", "generated")
    assert refused.code == 1
    assert "cannot use generated column in partition key" in refused.err
    assert catalog(conn) == before
    does("`partkey-migrate upgrade --strategy generated`, LIST table", "refused (exit 1): generated key impossible")


def test_a_generated_partition_key_is_refused_by_the_server(conn: psycopg.Connection[Any], does: Does) -> None:
    """The fact behind the refusal above, on this version: the server's own error."""
    column = "partition_key integer GENERATED ALWAYS AS (abs(hashtext(collection_id::text) % 10)) STORED"
    with pytest.raises(psycopg.errors.Error) as refused:
        conn.execute(f"CREATE TABLE chunks (collection_id uuid, {column}) PARTITION BY LIST (partition_key)")
    message = refused.value.diag.message_primary
    if _major(conn) < 12:
        assert isinstance(refused.value, psycopg.errors.SyntaxError)
        assert message == 'syntax error at or near "("'
    else:
        assert message == "cannot use generated column in partition key"
    does("server: generated column as partition key", f"error: {message}")


def test_hash_table_is_refused(conn: psycopg.Connection[Any], dsn: str, does: Does) -> None:
    conn.execute(
        "CREATE TABLE chunks (id bigint, collection_id uuid, partition_key int) PARTITION BY HASH (collection_id)"
    )
    conn.execute("CREATE TABLE chunks_h0 PARTITION OF chunks FOR VALUES WITH (MODULUS 2, REMAINDER 0)")
    conn.execute("CREATE TABLE chunks_h1 PARTITION OF chunks FOR VALUES WITH (MODULUS 2, REMAINDER 1)")
    refused = cli(dsn, "upgrade")
    assert refused.code == 1
    assert "rows are routed by hash partitioning" in refused.err
    does("`partkey-migrate upgrade`, HASH table", "refused (exit 1): no stored key to migrate")

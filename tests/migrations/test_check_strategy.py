"""The check strategy on a LIST table partitioned by the key (semantik's case), on PostgreSQL 18."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import psycopg
import pytest

from tests.migrations.helpers import catalog, cli, drift, expected_key, keys, state
from tests.schema import INT_MIN_COLLECTION_ID, create_list_table, insert_rows

CHECK = "chunks_partition_key_check"


@pytest.fixture
def list_table(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """10 partitions, 2000 rows, the legacy trigger on the parent, plus one extra index."""
    create_list_table(conn, modulus=10, trigger="parent")
    conn.execute("CREATE INDEX chunks_collection_idx ON chunks (collection_id, partition_key)")
    insert_rows(conn, 2000, modulus=10)
    return conn


def test_status_names_shape_trigger_overflow_and_strategy(list_table: psycopg.Connection[Any], dsn: str) -> None:
    run = cli(dsn, "status")
    assert run.code == 0, run.err
    assert "partitioned by LIST (partition_key), 10 partitions" in run.out
    assert "trigger on the parent: set_partition_key -> compute_partition_key()" in run.out
    assert "INT_MIN overflow in formula:   yes" in run.out
    assert "cannot use generated column in partition key" in run.out
    assert "upgrade would use:             check" in run.out
    assert "migration state:               not started" in run.out


def test_plan_shows_each_statement_with_lock_rewrite_and_estimate(
    list_table: psycopg.Connection[Any], dsn: str
) -> None:
    run = cli(dsn, "plan")
    assert run.code == 0, run.err
    steps = [line.split(":")[0] for line in run.out.splitlines() if line[:1].isdigit()]
    assert steps == ["1. pre-verify", "2. add-check", "3. validate-check", "4. drop-trigger"]
    validate = run.out[run.out.index("3. validate-check") : run.out.index("4. drop-trigger")]
    assert "SHARE UPDATE EXCLUSIVE" in validate and "rewrites the table: no" in validate
    assert 'VALIDATE CONSTRAINT "chunks_partition_key_check"' in validate
    assert "ACCESS EXCLUSIVE" in run.out[run.out.index("2. add-check") : run.out.index("3. validate-check")]
    assert 'abs(hashtext("collection_id"::text) % 10)' in run.out
    assert "estimated duration" in run.out and "estimated total" in run.out
    assert catalog(list_table)["triggers"] == [("chunks", "set_partition_key", "compute_partition_key")]


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
def test_plan_sql_is_a_runnable_script(list_table: psycopg.Connection[Any], dsn: str) -> None:
    script = cli(dsn, "plan", "--sql").out
    assert script.count("BEGIN;") == 4 and "VALIDATE CONSTRAINT" in script
    before = keys(list_table)
    result = subprocess.run(
        ["psql", dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1"],
        input=script,
        text=True,
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    after = catalog(list_table)
    assert f"{CHECK}:true" in after["constraints"]
    assert after["triggers"] == []
    assert keys(list_table) == before
    assert "nothing to do" in cli(dsn, "upgrade").out


def test_upgrade_verify_downgrade_upgrade_keeps_rows_keys_pk_and_indexes(
    list_table: psycopg.Connection[Any], dsn: str
) -> None:
    conn = list_table
    rows_before, catalog_before = keys(conn), catalog(conn)

    up = cli(dsn, "upgrade")
    assert up.code == 0, up.err
    assert "upgrade finished: state upgraded" in up.out
    upgraded = catalog(conn)
    assert upgraded["triggers"] == []
    assert "compute_partition_key" not in [f[0] for f in upgraded["functions"]]
    assert upgraded["constraints"][f"{CHECK}:true"] == (
        "CHECK ((partition_key = abs((hashtext((collection_id)::text) % 10))))"
    )
    assert upgraded["indexes"] == catalog_before["indexes"]
    assert keys(conn) == rows_before
    assert state(conn) == ("upgraded", ["add-check", "validate-check", "drop-trigger"])
    assert cli(dsn, "verify").code == 0

    # The CHECK now rejects a wrong key that the app sends, with a clear message.
    cid = "11111111-1111-4111-8111-111111111111"
    good = expected_key(conn, cid)
    with pytest.raises(psycopg.errors.CheckViolation, match=CHECK):
        conn.execute("INSERT INTO chunks (collection_id, partition_key) VALUES (%s, %s)", (cid, (good + 1) % 10))

    down = cli(dsn, "downgrade", "--keep-safe-formula")
    assert down.code == 0, down.err
    downgraded = catalog(conn)
    assert downgraded["triggers"] == [("chunks", "set_partition_key", "compute_partition_key")]
    assert downgraded["indexes"] == catalog_before["indexes"]
    assert downgraded["constraints"] == catalog_before["constraints"]
    source = dict(downgraded["functions"])["compute_partition_key"]
    assert 'abs(hashtext(NEW."collection_id"::text) % 10)' in source
    assert keys(conn) == rows_before
    assert state(conn) == ("downgraded", ["create-trigger", "drop-check"])

    again = cli(dsn, "upgrade")
    assert again.code == 0, again.err
    assert catalog(conn) == upgraded
    assert keys(conn) == rows_before
    assert "nothing to do" in cli(dsn, "upgrade").out
    assert catalog(conn) == upgraded


def test_int_min_collection_fails_with_legacy_trigger_and_works_after_upgrade_and_downgrade(
    list_table: psycopg.Connection[Any], dsn: str
) -> None:
    conn = list_table
    key = expected_key(conn, INT_MIN_COLLECTION_ID)
    insert = "INSERT INTO chunks (collection_id, partition_key) VALUES (%s, %s) RETURNING id"
    with pytest.raises(psycopg.errors.NumericValueOutOfRange):
        conn.execute(insert, (INT_MIN_COLLECTION_ID, key))
    assert cli(dsn, "upgrade").code == 0
    conn.execute(insert, (INT_MIN_COLLECTION_ID, key))
    assert cli(dsn, "downgrade", "--keep-safe-formula").code == 0
    conn.execute(insert, (INT_MIN_COLLECTION_ID, key))
    assert cli(dsn, "verify").code == 0


def test_upgrade_refuses_on_wrong_keys_names_repair_and_changes_nothing(
    list_table: psycopg.Connection[Any], dsn: str
) -> None:
    conn = list_table
    drift(conn, 7)
    before = catalog(conn)
    run = cli(dsn, "upgrade")
    assert run.code == 1
    assert "7 row(s)" in run.err and "partkey-migrate repair" in run.err and "Nothing was changed" in run.err
    assert catalog(conn) == before
    assert state(conn) is None


def test_verify_exits_1_on_wrong_keys_and_repair_moves_rows_in_batches(
    list_table: psycopg.Connection[Any], dsn: str
) -> None:
    conn = list_table
    drift(conn, 25)
    total = conn.execute("SELECT count(*) FROM chunks").fetchone()
    bad = cli(dsn, "verify")
    assert bad.code == 1
    assert "wrong keys: 25" in bad.out and "run partkey-migrate repair" in bad.out

    run = cli(dsn, "repair", "--batch-size", "10")
    assert run.code == 0, run.err
    batches = [line for line in run.out.splitlines() if line.startswith("batch ")]
    assert sum(int(line.split("fixed ")[1].split()[0]) for line in batches) == 25
    assert all(int(line.split("fixed ")[1].split()[0]) <= 10 for line in batches)
    assert "moved to the partition of the right key" in batches[0]
    assert "repair: fixed 25 row(s)" in run.out
    assert conn.execute("SELECT count(*) FROM chunks").fetchone() == total
    for collection_id, key, relation in keys(conn).values():
        assert key == expected_key(conn, collection_id)
        assert relation == f"chunks_part_{key:02d}"
    assert cli(dsn, "verify").code == 0
    assert cli(dsn, "upgrade").code == 0


def test_generated_strategy_is_refused_on_a_list_table(list_table: psycopg.Connection[Any], dsn: str) -> None:
    before = catalog(list_table)
    run = cli(dsn, "upgrade", "--strategy", "generated")
    assert run.code == 1
    assert "cannot use generated column in partition key" in run.err
    assert catalog(list_table) == before


def test_bad_dsn_and_missing_table_give_one_line_without_password(conn: psycopg.Connection[Any], dsn: str) -> None:
    run = cli("host=/nonexistent-dir port=1 user=u password=hunter2secret dbname=x", "status")
    assert run.code == 2
    assert run.err.startswith("partkey-migrate: error: cannot connect to the database")
    assert "hunter2secret" not in run.err + run.out and "Traceback" not in run.err
    assert len(run.err.strip().splitlines()) == 1

    broken = cli("postgresql://u:hunter2secret@[bad", "status")
    assert broken.code == 2 and "hunter2secret" not in broken.err and "Traceback" not in broken.err

    missing = cli(dsn, "status", "--table", "public.nope")
    assert missing.code == 2
    assert missing.err.strip() == (
        f"partkey-migrate: error: table public.nope does not exist in database {conn.info.dbname!r}"
    )


def test_a_legacy_overflowing_check_is_replaced_by_a_safe_one(conn: psycopg.Connection[Any], dsn: str) -> None:
    create_list_table(conn, modulus=10, trigger=None)
    insert_rows(conn, 500, modulus=10)
    conn.execute(
        f"ALTER TABLE chunks ADD CONSTRAINT {CHECK} CHECK (partition_key = abs(hashtext(collection_id::text)) % 10)"
    )
    assert "INT_MIN overflow in formula:   yes" in cli(dsn, "status").out
    run = cli(dsn, "upgrade")
    assert run.code == 0, run.err
    constraints = catalog(conn)["constraints"]
    assert f"{CHECK}:true" not in constraints
    assert constraints["chunks_partition_key_safe_check:true"] == (
        "CHECK ((partition_key = abs((hashtext((collection_id)::text) % 10))))"
    )
    assert "INT_MIN overflow in formula:   no" in cli(dsn, "status").out


def test_library_api_on_a_psycopg_connection(list_table: psycopg.Connection[Any], dsn: str) -> None:
    from migrations import db003
    from migrations.errors import RefusedError

    options = db003.options_for(modulus=10)
    with psycopg.connect(dsn) as not_autocommit, pytest.raises(RuntimeError, match="autocommit_block"):
        db003.upgrade(not_autocommit, options=options)
    with psycopg.connect(dsn, autocommit=True) as connection:
        drift(list_table, 2)
        assert db003.verify(connection, options=options) is False
        with pytest.raises(RefusedError, match="repair"):
            db003.upgrade(connection, options=options)
        assert cli(dsn, "repair").code == 0
        assert db003.verify(connection, options=options) is True
        assert db003.upgrade(connection, options=options).state == "upgraded"
        assert db003.downgrade(connection, options=options).state == "downgraded"
    assert catalog(list_table)["triggers"] == [("chunks", "set_partition_key", "compute_partition_key")]


def test_per_partition_triggers_on_pg18_are_all_dropped_and_the_parent_gets_one_back(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    # What a pg_upgrade from 11/12 leaves behind: one trigger per partition, on a version that allows the parent.
    create_list_table(conn, modulus=10, trigger="partitions")
    insert_rows(conn, 500, modulus=10)
    report = json.loads(cli(dsn, "status", "--json").out)
    assert report["implementation"].startswith("trigger on each partition")
    assert report["upgrade_strategy"] == "check" and report["formula_overflow"] is True
    assert cli(dsn, "upgrade").code == 0
    assert catalog(conn)["triggers"] == []
    assert cli(dsn, "downgrade").code == 0
    assert catalog(conn)["triggers"] == [("chunks", "set_partition_key", "compute_partition_key")]

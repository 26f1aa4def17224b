"""Replication around the column swap: REPLICA IDENTITY USING INDEX on a key index the swap rebuilds, and a live
logical subscriber to a publication with a column list on the table."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.migrations.helpers import catalog, cli, keys
from tests.pgserver import scratch_database
from tests.reliability.harness import PrivateServer
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


@contextmanager
def logical_server(admin_dsn: str) -> Iterator[str]:
    """A superuser DSN on a server with wal_level=logical: the test server when it has it, else a private PG 18
    (changing wal_level needs a restart, which the shared test server must not get)."""
    with psycopg.connect(admin_dsn) as conn:
        level = conn.execute("SHOW wal_level").fetchone()
    if level == ("logical",):
        yield admin_dsn
        return
    server = PrivateServer()
    try:
        with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET wal_level = logical")
        server.restart()
        yield server.admin_dsn
    finally:
        server.cleanup()


def published(conn: psycopg.Connection[Any], columns: str) -> list[tuple[Any, ...]]:
    """The published columns of every row, in id order."""
    return conn.execute(sql.SQL("SELECT {} FROM chunks ORDER BY id").format(sql.SQL(columns))).fetchall()


def replicated(publisher: psycopg.Connection[Any], subscriber: psycopg.Connection[Any], columns: str) -> None:
    """Wait until the subscriber holds exactly the publisher's rows (polled; the deadline only ends a broken run)."""
    deadline = time.monotonic() + 120
    while published(subscriber, columns) != published(publisher, columns):
        assert time.monotonic() < deadline, "the subscriber never caught up"
        time.sleep(0.1)


def app_writes(conn: psycopg.Connection[Any], tag: str) -> None:
    """What the application does meanwhile: INSERTs without the key (trigger or generated column fills it), an
    UPDATE of a collection and a DELETE, so INSERT, UPDATE and DELETE all go through the publication."""
    conn.execute(
        "INSERT INTO chunks (collection_id, content) SELECT md5(%s || g)::uuid, %s FROM generate_series(1, 20) g",
        (tag, tag),
    )
    conn.execute("UPDATE chunks SET content = content || ' updated' WHERE id = (SELECT min(id) FROM chunks)")
    conn.execute("DELETE FROM chunks WHERE id = (SELECT max(id) FROM chunks WHERE content = %s)", (tag,))


@pytest.mark.slow  # a private server and its restart, initial sync, two migrations: about 20 s here
@pytest.mark.timeout(300)
def test_a_live_subscriber_keeps_replicating_across_upgrade_and_downgrade(admin_dsn: str) -> None:
    """A second database on the same server subscribes to a publication with a column list on the table; rows
    written before, between and after upgrade and downgrade all arrive, and the subscription never errs."""
    with logical_server(admin_dsn) as server:
        with psycopg.connect(server, autocommit=True) as admin:
            if admin.info.server_version < 150000:
                pytest.skip("publication column lists exist from PostgreSQL 15")
            # PG 15-17 refuse a generated column in a column list (the migration refuses that up front, tested
            # elsewhere): the key is listed on 18 only.
            columns = "id, collection_id, content"
            if admin.info.server_version >= 180000:
                columns = "id, collection_id, partition_key, content"
        suffix = uuid.uuid4().hex[:8]
        with (
            scratch_database(server, f"pkm_pub_{suffix}") as pub_dsn,
            scratch_database(server, f"pkm_sub_{suffix}") as sub_dsn,
            psycopg.connect(pub_dsn, autocommit=True) as publisher,
            psycopg.connect(sub_dsn, autocommit=True) as subscriber,
        ):
            create_plain_table(publisher, modulus=10)
            insert_rows(publisher, 300, modulus=10, supply_key=False)
            publisher.execute(sql.SQL("CREATE PUBLICATION chunks_pub FOR TABLE chunks ({})").format(sql.SQL(columns)))
            subscriber.execute(
                "CREATE TABLE chunks (id bigint PRIMARY KEY, collection_id uuid, partition_key integer, content text)"
            )
            # Same cluster: the slot is made beforehand, or CREATE SUBSCRIPTION waits for its own transaction.
            slot = f"pkm_sub_{suffix}"
            publisher.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
            subscriber.execute(
                sql.SQL(
                    "CREATE SUBSCRIPTION pkm_sub CONNECTION {} PUBLICATION chunks_pub "
                    "WITH (create_slot = false, slot_name = {})"
                ).format(sql.Literal(pub_dsn), sql.Literal(slot))
            )
            try:
                replicated(publisher, subscriber, columns)  # the initial copy
                for command in ("upgrade", "downgrade"):
                    app_writes(publisher, f"before {command}")
                    run = cli(pub_dsn, command, *(("--strategy", "generated") if command == "upgrade" else ()))
                    assert run.code == 0, run.err
                    app_writes(publisher, f"after {command}")
                    replicated(publisher, subscriber, columns)
                    assert published(publisher, columns)[-1][-1] == f"after {command}"
                errors = subscriber.execute(
                    "SELECT apply_error_count, sync_error_count FROM pg_stat_subscription_stats"
                ).fetchone()
                assert errors == (0, 0)
            finally:
                subscriber.execute("DROP SUBSCRIPTION pkm_sub")  # stops the worker and drops its slot

"""PostgreSQL 11 and 12: per-partition triggers, and PG 11's plain table keeps its trigger."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.migrations.helpers import catalog, cli, keys, state
from tests.migrations.test_generated_strategy import create_plain
from tests.pgserver import scratch_database
from tests.schema import INT_MIN_COLLECTION_ID, create_list_table, insert_rows

_names = itertools.count()


@pytest.fixture(scope="module", params=[11, 12], ids=["pg11", "pg12"])
def old_server(request: pytest.FixtureRequest) -> Iterator[tuple[int, str]]:
    """A throwaway PostgreSQL 11 or 12 from tests/pgversions.py; skipped when it cannot be had."""
    try:
        from tests.pgversions import PgVersionsError, versioned_server
    except ImportError as error:  # pragma: no cover - depends on the other developer's module
        pytest.skip(f"tests/pgversions.py is not available: {error}")
    major = int(request.param)
    try:
        with versioned_server(major) as admin:
            yield major, admin
    except PgVersionsError as error:
        pytest.skip(f"PostgreSQL {major} is not available here: {error}")


@pytest.fixture
def old(old_server: tuple[int, str]) -> Iterator[tuple[int, str, psycopg.Connection[Any]]]:
    """(major, dsn, autocommit connection) of a fresh database on the old server."""
    major, admin = old_server
    with (
        scratch_database(admin, f"partkey_old_{next(_names)}") as dsn,
        psycopg.connect(dsn, autocommit=True) as conn,
    ):
        assert conn.info.server_version // 10000 == major
        yield major, dsn, conn


def test_list_table_with_per_partition_triggers(old: tuple[int, str, psycopg.Connection[Any]]) -> None:
    major, dsn, conn = old
    create_list_table(conn, modulus=10, trigger="partitions")
    insert_rows(conn, 1000, modulus=10)
    rows, before = keys(conn), catalog(conn)
    assert len(before["triggers"]) == 10
    status = cli(dsn, "status").out
    assert f"(major {major})" in status and "trigger on each partition" in status
    assert "upgrade would use:             check" in status

    plan = cli(dsn, "plan").out
    assert "drop the key trigger from 10 partitions" in plan
    assert plan.count("DROP TRIGGER IF EXISTS") == 10

    up = cli(dsn, "upgrade")
    assert up.code == 0, up.err
    upgraded = catalog(conn)
    assert upgraded["triggers"] == []
    assert "chunks_partition_key_check:true" in upgraded["constraints"]
    assert upgraded["indexes"] == before["indexes"]
    assert keys(conn) == rows
    assert cli(dsn, "verify").code == 0

    down = cli(dsn, "downgrade", "--keep-safe-formula")
    assert down.code == 0, down.err
    downgraded = catalog(conn)
    assert downgraded["triggers"] == before["triggers"]  # back on each partition, where 11/12 need them
    assert downgraded["constraints"] == before["constraints"]
    assert downgraded["indexes"] == before["indexes"]
    assert "% 10)" in dict(downgraded["functions"])["compute_partition_key"]
    assert keys(conn) == rows

    assert cli(dsn, "upgrade").code == 0
    assert catalog(conn) == upgraded
    assert keys(conn) == rows


def test_plain_table(old: tuple[int, str, psycopg.Connection[Any]]) -> None:
    major, dsn, conn = old
    create_plain(conn, rows=1000)
    rows, before = keys(conn), catalog(conn)
    run = cli(dsn, "upgrade")
    assert run.code == 0, run.err
    if major == 11:
        assert "partkey-migrate: GENERATED columns need PostgreSQL 12 (this server is 11." in run.err
        assert "upgrade finished: state kept-trigger" in run.out
        assert state(conn) == ("kept-trigger", ["fix-trigger"])
        assert catalog(conn)["triggers"] == before["triggers"]
        inserted = conn.execute(
            "INSERT INTO chunks (collection_id) VALUES (%s) RETURNING partition_key", (INT_MIN_COLLECTION_ID,)
        ).fetchone()
        assert inserted == (8,)
        refused = cli(dsn, "upgrade", "--strategy", "generated")
        assert refused.code == 1 and "needs PostgreSQL 12+" in refused.err
        return
    upgraded = catalog(conn)
    assert upgraded["columns"][-1] == ("partition_key", "integer", True, "s")
    assert upgraded["indexes"] == before["indexes"] and upgraded["triggers"] == []
    assert keys(conn) == rows
    assert cli(dsn, "downgrade").code == 0
    downgraded = catalog(conn)
    assert downgraded["indexes"] == before["indexes"] and downgraded["triggers"] == before["triggers"]
    assert keys(conn) == rows
    assert cli(dsn, "upgrade").code == 0
    assert catalog(conn) == upgraded

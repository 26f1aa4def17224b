"""The example Alembic revision, run by real Alembic and SQLAlchemy (postgresql+psycopg) against PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.migrations.helpers import ROOT, catalog, keys, state
from tests.schema import create_list_table, insert_rows

sqlalchemy = pytest.importorskip("sqlalchemy")
pytest.importorskip("alembic")


def sqlalchemy_url(dsn: str) -> str:
    """The libpq DSN as a postgresql+psycopg URL."""
    params = conninfo_to_dict(dsn)
    query = {"host": str(params["host"])} if str(params.get("host", "")).startswith("/") else {}
    port = params.get("port")
    url = sqlalchemy.engine.URL.create(
        "postgresql+psycopg",
        username=str(params.get("user") or "") or None,
        password=str(params.get("password") or "") or None,
        host=None if query else params.get("host"),
        port=int(port) if port else None,
        database=str(params["dbname"]),
        query=query,
    )
    return str(url.render_as_string(hide_password=False))


def alembic(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the alembic command line on the example project."""
    return subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "alembic"), "-c", "examples/alembic/alembic.ini", *args],
        cwd=ROOT,
        env={**os.environ, "PARTKEY_SQLALCHEMY_URL": sqlalchemy_url(dsn)},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_alembic_upgrade_head_then_downgrade_one(conn: psycopg.Connection[Any], dsn: str) -> None:
    create_list_table(conn, modulus=100, trigger="parent")
    insert_rows(conn, 2000, modulus=100)
    rows, before = keys(conn), catalog(conn)

    up = alembic(dsn, "upgrade", "head")
    assert up.returncode == 0, up.stderr
    assert "Running upgrade  -> 0001_db003" in up.stderr
    upgraded = catalog(conn)
    assert upgraded["triggers"] == []
    assert "chunks_partition_key_check:true" in upgraded["constraints"]
    assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0001_db003",)]
    assert state(conn) == ("upgraded", ["add-check", "validate-check", "drop-trigger"])
    assert keys(conn) == rows

    down = alembic(dsn, "downgrade", "-1")
    assert down.returncode == 0, down.stderr
    downgraded = catalog(conn)
    assert downgraded["triggers"] == before["triggers"]
    assert downgraded["constraints"] == before["constraints"]
    assert downgraded["indexes"] == before["indexes"]
    assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == []
    assert keys(conn) == rows


def test_alembic_upgrade_refuses_on_wrong_keys_and_leaves_the_version_alone(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    create_list_table(conn, modulus=100, trigger="parent")
    insert_rows(conn, 500, modulus=100)
    conn.execute("UPDATE chunks SET collection_id = md5('x' || id)::uuid WHERE id <= 5")
    before = catalog(conn)
    run = alembic(dsn, "upgrade", "head")
    assert run.returncode != 0
    assert "partkey-migrate repair" in run.stderr
    assert catalog(conn)["triggers"] == before["triggers"]
    assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (0,)

"""The example Alembic revision, run by real Alembic and SQLAlchemy (postgresql+psycopg) against PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from migrations import db003
from tests.migrations.helpers import ROOT, catalog, keys, state
from tests.schema import create_list_table, insert_rows

sqlalchemy = pytest.importorskip("sqlalchemy")
pytest.importorskip("alembic")


DRIVERS = ["psycopg", "psycopg2", "asyncpg"]


def sqlalchemy_url(dsn: str, driver: str = "psycopg") -> str:
    """The libpq DSN as a postgresql+<driver> URL."""
    params = conninfo_to_dict(dsn)
    query = {"host": str(params["host"])} if str(params.get("host", "")).startswith("/") else {}
    port = params.get("port")
    url = sqlalchemy.engine.URL.create(
        f"postgresql+{driver}",
        username=str(params.get("user") or "") or None,
        password=str(params.get("password") or "") or None,
        host=None if query else params.get("host"),
        port=int(port) if port else None,
        database=str(params["dbname"]),
        query=query,
    )
    return str(url.render_as_string(hide_password=False))


def alembic(
    dsn: str, *args: str, driver: str = "psycopg", ini: str = "examples/alembic/alembic.ini"
) -> subprocess.CompletedProcess[str]:
    """Run the alembic command line on the example project (or another one)."""
    return subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "alembic"), "-c", ini, *args],
        cwd=ROOT,
        env={**os.environ, "PARTKEY_SQLALCHEMY_URL": sqlalchemy_url(dsn, driver)},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.mark.parametrize("driver", DRIVERS)
def test_alembic_upgrade_head_then_downgrade_one(conn: psycopg.Connection[Any], dsn: str, driver: str) -> None:
    create_list_table(conn, modulus=100, trigger="parent")
    insert_rows(conn, 2000, modulus=100)
    rows, before = keys(conn), catalog(conn)

    up = alembic(dsn, "upgrade", "head", driver=driver)
    assert up.returncode == 0, up.stderr
    assert "Running upgrade  -> 0001_db003" in up.stderr
    upgraded = catalog(conn)
    assert upgraded["triggers"] == []
    assert "chunks_partition_key_check:true" in upgraded["constraints"]
    assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0001_db003",)]
    assert state(conn) == ("upgraded", ["add-check", "validate-check", "drop-trigger"])
    assert keys(conn) == rows

    assert "transaction_per_migration" not in up.stderr  # the example's env.py sets it: no warning

    down = alembic(dsn, "downgrade", "-1", driver=driver)
    assert down.returncode == 0, down.stderr
    downgraded = catalog(conn)
    assert downgraded["triggers"] == before["triggers"]
    assert downgraded["constraints"] == before["constraints"]
    assert downgraded["indexes"] == before["indexes"]
    assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == []
    assert keys(conn) == rows


@pytest.mark.parametrize("driver", DRIVERS)
def test_alembic_upgrade_refuses_on_wrong_keys_and_leaves_the_version_alone(
    conn: psycopg.Connection[Any], dsn: str, driver: str
) -> None:
    create_list_table(conn, modulus=100, trigger="parent")
    insert_rows(conn, 500, modulus=100)
    conn.execute("UPDATE chunks SET collection_id = md5('x' || id)::uuid WHERE id <= 5")
    before = catalog(conn)
    run = alembic(dsn, "upgrade", "head", driver=driver)
    assert run.returncode != 0
    assert "partkey-migrate repair" in run.stderr
    assert catalog(conn)["triggers"] == before["triggers"]
    assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (0,)


def test_offline_mode_refuses_in_one_line_naming_plan_sql(conn: psycopg.Connection[Any], dsn: str) -> None:
    create_list_table(conn, modulus=100, trigger="parent")
    before = catalog(conn)
    run = alembic(dsn, "upgrade", "head", "--sql", driver="psycopg2")
    assert run.returncode != 0  # alembic's CommandError: "FAILED: ..." and exit 255
    # One line: "FAILED: <why>" (or "ERROR [alembic.util.messaging] <why>" once alembic.ini configures logging).
    last = run.stderr.strip().splitlines()[-1]
    assert last.endswith(
        "partkey-migrate cannot run in Alembic's offline (--sql) mode: it plans from the live catalog and "
        "verifies the data first. Run `partkey-migrate plan --sql` against the database (or a copy) for a psql "
        "script instead"
    ), run.stderr
    assert "Traceback" not in run.stderr and "TypeError" not in run.stderr
    assert catalog(conn) == before


def test_the_library_refuses_a_connection_that_is_not_postgresql() -> None:
    engine = sqlalchemy.create_engine("sqlite://")
    with engine.connect() as connection, pytest.raises(TypeError, match="needs an autocommit psycopg 3 connection"):
        db003.verify(connection)

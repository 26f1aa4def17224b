"""The generated-strategy downgrade re-creates the trigger function with every attribute it had before the
upgrade: volatility, SECURITY DEFINER, SET search_path, cost, owner, comment and privileges (pg_proc,
pg_description, proacl compared before and after)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from migrations.errors import ExitCode
from tests.migrations.helpers import cli
from tests.schema import create_plain_table, insert_rows

pytestmark = pytest.mark.versioned("partkey-migrate downgrade keeps the function's attributes")

OWNER = f"partkey_fn_owner_{os.getpid()}"
CALLER = f"partkey_fn_caller_{os.getpid()}"

ATTRIBUTES_SQL = """
SELECT p.provolatile::text, p.prosecdef, p.proconfig::text, p.procost::float8, pg_get_userbyid(p.proowner)::text,
       obj_description(p.oid, 'pg_proc'), p.proacl::text, p.proleakproof
FROM pg_proc p WHERE p.oid = 'public.compute_partition_key'::regproc
"""


@pytest.fixture
def roles(conn: psycopg.Connection[Any], admin_dsn: str) -> Iterator[None]:
    """Two roles (cluster-wide): the function's owner and a caller it is granted to; dropped afterwards."""
    for role in (OWNER, CALLER):
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(f"CREATE ROLE {role}")
    yield
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        for role in (OWNER, CALLER):
            with contextlib.suppress(psycopg.errors.DependentObjectsStillExist):
                admin.execute(f"DROP ROLE IF EXISTS {role}")


def _function(conn: psycopg.Connection[Any]) -> tuple[str, tuple[Any, ...]]:
    """pg_get_functiondef and the attributes of compute_partition_key()."""
    definition = conn.execute("SELECT pg_get_functiondef('public.compute_partition_key'::regproc)").fetchone()
    attributes = conn.execute(ATTRIBUTES_SQL).fetchone()
    assert definition is not None and attributes is not None
    return str(definition[0]), tuple(attributes)


@pytest.mark.parametrize("keep_safe", [False, True], ids=["restore", "keep-safe-formula"])
def test_generated_downgrade_restores_the_function_attributes(
    conn: psycopg.Connection[Any], dsn: str, roles: None, keep_safe: bool
) -> None:
    if conn.info.server_version < 120000:
        pytest.skip("no generated columns before PostgreSQL 12: the plain table keeps its trigger")
    create_plain_table(conn, modulus=10)
    insert_rows(conn, 100, modulus=10)
    conn.execute(
        "ALTER FUNCTION compute_partition_key() STABLE SECURITY DEFINER COST 7 SET search_path = public, pg_temp"
    )
    conn.execute(f"ALTER FUNCTION compute_partition_key() OWNER TO {OWNER}")
    conn.execute("COMMENT ON FUNCTION compute_partition_key() IS 'keys chunks (DB-003)'")
    conn.execute("REVOKE ALL ON FUNCTION compute_partition_key() FROM PUBLIC")
    conn.execute(f"GRANT EXECUTE ON FUNCTION compute_partition_key() TO {CALLER} WITH GRANT OPTION")
    definition, attributes = _function(conn)
    assert attributes[6] is not None and CALLER in attributes[6]  # privileges are not the default ones

    assert cli(dsn, "upgrade", "--strategy", "generated").code == ExitCode.OK
    gone = conn.execute("SELECT to_regproc('public.compute_partition_key') IS NULL").fetchone()
    kept = conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'chunks'::regclass AND NOT tgisinternal")
    assert gone is not None and kept.fetchone() == (0,)
    downgrade = cli(dsn, "downgrade", *(["--keep-safe-formula"] if keep_safe else []))
    assert downgrade.code == ExitCode.OK, downgrade.err

    restored_definition, restored_attributes = _function(conn)
    assert restored_attributes == attributes
    if keep_safe:
        assert 'abs(hashtext(NEW."collection_id"::text) % 10)' in restored_definition
        assert restored_definition != definition
    else:
        assert restored_definition == definition
    # The trigger fires with the restored function: new rows get their key.
    conn.execute("INSERT INTO chunks (collection_id) VALUES ('00000000-0000-0000-0000-000000000001')")
    row = conn.execute(
        "SELECT partition_key = abs(hashtext(collection_id::text) % 10) FROM chunks ORDER BY id DESC LIMIT 1"
    ).fetchone()
    assert row == (True,)

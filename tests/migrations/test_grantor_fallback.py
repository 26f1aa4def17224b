"""Column grants whose grantor the migrating role cannot SET ROLE to: granted by the migrating role instead."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tests.migrations.helpers import cli, keys
from tests.schema import create_plain_table, insert_rows

PASSWORD = "partkey-grantor-test"  # a throwaway role on the test server


def column_grants(conn: psycopg.Connection[Any]) -> list[tuple[str, str, str, bool]]:
    """(privilege, grantor, grantee, grantable) on chunks.partition_key, sorted."""
    return sorted(
        (str(p), str(g), str(e), bool(x))
        for p, g, e, x in conn.execute(
            "SELECT a.privilege_type, a.grantor::regrole::text, a.grantee::regrole::text, a.is_grantable "
            "FROM pg_attribute, aclexplode(attacl) a WHERE attrelid = 'chunks'::regclass "
            "AND attname = 'partition_key'"
        ).fetchall()
    )


@pytest.fixture
def roles(conn: psycopg.Connection[Any]) -> Iterator[dict[str, str]]:
    """A login role that owns everything and runs the migration, a grantor and a grantee; dropped afterwards."""
    suffix = uuid.uuid4().hex[:8]
    names = {"owner": f"pkm_owner_{suffix}", "grantor": f"pkm_grantor_{suffix}", "grantee": f"pkm_grantee_{suffix}"}
    conn.execute(f"CREATE ROLE {names['owner']} LOGIN PASSWORD '{PASSWORD}'")
    conn.execute(f"CREATE ROLE {names['grantor']} NOLOGIN")
    conn.execute(f"CREATE ROLE {names['grantee']} NOLOGIN")
    try:
        yield names
    finally:
        # Roles are cluster-wide; what they own or were granted lives in this test's database only.
        for role in names.values():
            conn.execute(f"DROP OWNED BY {role} CASCADE")
        for role in names.values():
            conn.execute(f"DROP ROLE {role}")


def owned_table(conn: psycopg.Connection[Any], roles: dict[str, str]) -> None:
    """The plain table, its trigger function and the schema's CREATE right given to the migrating (non-super) role;
    the grantor holds SELECT (partition_key) WITH GRANT OPTION from the owner and grants it on to the grantee."""
    owner, grantor, grantee = roles["owner"], roles["grantor"], roles["grantee"]
    create_plain_table(conn, modulus=10)
    insert_rows(conn, 200, modulus=10)
    conn.execute(f"ALTER TABLE chunks OWNER TO {owner}")
    conn.execute(f"ALTER FUNCTION compute_partition_key() OWNER TO {owner}")
    conn.execute(f"GRANT CREATE ON SCHEMA public TO {owner}")
    conn.execute(f"SET ROLE {owner}")
    conn.execute(f"GRANT SELECT (partition_key) ON chunks TO {grantor} WITH GRANT OPTION")
    conn.execute(f"SET ROLE {grantor}")
    conn.execute(f"GRANT SELECT (partition_key) ON chunks TO {grantee}")
    conn.execute("RESET ROLE")


@pytest.mark.versioned("partkey-migrate grantor fallback")
@pytest.mark.parametrize("membership", ["none", "member without SET"])
def test_a_grantor_the_migrating_role_cannot_become_is_replaced_by_it_and_plan_says_so(
    conn: psycopg.Connection[Any], dsn: str, roles: dict[str, str], membership: str
) -> None:
    """The migrating role (the table's owner, no superuser) cannot SET ROLE to the grantor: either it is no member
    of it, or (PG 16+) a member granted WITH SET FALSE, whom pg_has_role(..., 'MEMBER') still calls a member."""
    if conn.info.server_version < 120000:
        pytest.skip("no generated columns before PostgreSQL 12: the plain table keeps its trigger")
    if membership == "member without SET" and conn.info.server_version < 160000:
        pytest.skip("GRANT role ... WITH SET FALSE exists from PostgreSQL 16")
    owner, grantor, grantee = roles["owner"], roles["grantor"], roles["grantee"]
    owned_table(conn, roles)
    if membership == "member without SET":
        conn.execute(f"GRANT {grantor} TO {owner} WITH INHERIT TRUE, SET FALSE")
    before, rows = column_grants(conn), keys(conn)
    assert before == sorted([("SELECT", owner, grantor, True), ("SELECT", grantor, grantee, False)])
    as_owner = make_conninfo(dsn, user=owner, password=PASSWORD)

    plan = json.loads(cli(as_owner, "plan", "--json", "--strategy", "generated").out)
    privileges = [d for d in plan["key_column_dependents"] if d["kind"] == "column privilege"]
    assert len(privileges) == 1 and privileges[0]["carried"], plan["key_column_dependents"]
    assert (
        f"(except {grantor}: the migrating role cannot SET ROLE to it, so it becomes the grantor)"
        in (privileges[0]["action"])
    )
    up = cli(as_owner, "upgrade", "--strategy", "generated")
    assert up.code == 0, up.err
    # Same privileges, same grantees, same grant option; only the grant the migrating role could not make as the
    # grantor is now recorded as the owner's.
    after = sorted([("SELECT", owner, grantor, True), ("SELECT", owner, grantee, False)])
    assert column_grants(conn) == after
    down = cli(as_owner, "downgrade")
    assert down.code == 0, down.err
    assert column_grants(conn) == after
    assert keys(conn) == rows

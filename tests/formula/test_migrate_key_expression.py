"""partkey-migrate --key-expression: parsed and validated with pglast, compared with the catalog's, used by
plan/upgrade/verify; a formula the tool cannot read or a catalog read that times out is refused (exit 3)."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from exporter.formula_catalog import table_formulas
from exporter.keyspec import KeySpec
from migrations.errors import ExitCode
from tests.migrations.helpers import cli
from tests.schema import create_plain_table, insert_rows

pytestmark = pytest.mark.versioned("partkey-migrate --key-expression")

GIVEN = "abs(hashtext(collection_id::text) % 10)"
# The key through a variable the reader does not follow: the formula is the DB-003 one, but cannot be read.
OPAQUE_TRIGGER = """CREATE FUNCTION compute_partition_key() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE k integer;
BEGIN
    k := hashtext(NEW.collection_id::text);
    NEW.partition_key := abs(k % 10);
    RETURN NEW;
END $$"""


def _opaque_table(conn: psycopg.Connection[Any], rows: int = 200) -> None:
    """A plain chunks table keyed by a trigger whose formula the parser cannot follow."""
    create_plain_table(conn, modulus=10, key="none")
    conn.execute(OPAQUE_TRIGGER)
    conn.execute(
        "CREATE TRIGGER set_partition_key BEFORE INSERT ON chunks "
        "FOR EACH ROW EXECUTE PROCEDURE compute_partition_key()"
    )
    insert_rows(conn, rows, modulus=10)


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("abs(hashtext((SELECT 'x')::text) % 10)", "a subquery"),
        ("abs(hashtext(md5(collection_id::text)) % 10)", "function md5() is outside the key formula family"),
        ("abs(hashtext(collection_id::text) % 10) -- note", "comments are not allowed"),
        ("abs(hashtext(other.collection_id::text) % 10)", "other.collection_id is not a column of the table"),
        ("abs(hashtext(collection_id::text) % 0)", "the modulus must be a positive integer constant"),
    ],
)
def test_hostile_or_wrong_expressions_are_refused(
    conn: psycopg.Connection[Any], dsn: str, expression: str, reason: str
) -> None:
    create_plain_table(conn, modulus=10)
    run = cli(dsn, "verify", "--key-expression", expression)
    assert run.code == ExitCode.USAGE, run.err
    assert f"--key-expression {expression!r} is not a key formula: {reason}" in run.err


def test_a_column_the_table_lacks_is_refused(conn: psycopg.Connection[Any], dsn: str) -> None:
    create_plain_table(conn, modulus=10)
    run = cli(dsn, "plan", "--key-expression", "abs(hashtext(tenant_id::text) % 10)")
    assert run.code == ExitCode.USAGE, run.err
    assert "--key-expression: public.chunks has no column tenant_id" in run.err


def test_unreadable_formula_refused_then_given_end_to_end(conn: psycopg.Connection[Any], dsn: str) -> None:
    """The trigger's formula cannot be read: verify refuses (exit 3) instead of guessing; with --key-expression
    verify counts exactly the wrong rows, upgrade writes the given formula and the table then holds it."""
    _opaque_table(conn)
    refused = cli(dsn, "verify")
    assert refused.code == ExitCode.DATABASE, refused.err
    last = refused.err.splitlines()[-1]
    assert last.startswith(
        "partkey-migrate: could not read the key formula of public.chunks: "
        "trigger set_partition_key -> public.compute_partition_key(): "
    )
    assert last.endswith("; pass --key-expression")
    assert cli(dsn, "status").code == ExitCode.OK  # status still reads and shows the place as unreadable

    assert cli(dsn, "verify", "--key-expression", GIVEN).code == ExitCode.OK
    conn.execute("UPDATE chunks SET partition_key = (partition_key + 1) % 10 WHERE id IN (3, 5, 8)")
    wrong = cli(dsn, "verify", "--key-expression", GIVEN, "--json")
    assert wrong.code == ExitCode.REFUSED, wrong.err
    assert json.loads(wrong.out)["mismatched"] == 3
    conn.execute("UPDATE chunks SET partition_key = abs(hashtext(collection_id::text) % 10)")

    if conn.info.server_version < 120000:
        return  # the rest writes a generated column (PG 12+); keep-trigger sees no overflow to fix here
    plan = cli(dsn, "plan", "--strategy", "generated", "--key-expression", GIVEN, "--sql")
    assert plan.code == ExitCode.OK, plan.err
    assert 'GENERATED ALWAYS AS (abs(hashtext("collection_id"::text) % 10)) STORED' in plan.out
    upgraded = cli(dsn, "upgrade", "--strategy", "generated", "--key-expression", GIVEN)
    assert upgraded.code == ExitCode.OK, upgraded.err
    found = table_formulas(conn, KeySpec(auto=True))
    assert found is not None
    assert [(p.kind, p.normalised) for p in found.places if p.kind == "generated"] == [
        ("generated", "abs(hashtext(collection_id) % 10)")
    ]
    # Now the table's formula can be read again: no option needed.
    assert cli(dsn, "verify").code == ExitCode.OK


def test_a_given_formula_that_differs_is_named(conn: psycopg.Connection[Any], dsn: str) -> None:
    """--key-expression overrides the table's formula; the run says they differ, status lists both."""
    create_plain_table(conn, modulus=10)
    insert_rows(conn, 50, modulus=10)
    run = cli(dsn, "status", "--key-expression", "abs(hashtext(content) % 10)", "--json")
    assert run.code == ExitCode.OK, run.err
    assert (
        "--key-expression abs(hashtext(content) % 10) is not the table's formula abs(hashtext(collection_id) % 10) "
        "(from trigger set_partition_key -> public.compute_partition_key()): using the given one"
    ) in run.err
    places = {p["kind"]: (p["normalised"], p["agrees"]) for p in json.loads(run.out)["formulas"]["places"]}
    assert places["configured"] == ("abs(hashtext(content) % 10)", False)
    assert places["trigger"] == ("abs(hashtext(collection_id) % 10)", True)


def test_catalog_read_timeout_is_refused(conn: psycopg.Connection[Any], dsn: str) -> None:
    """A catalog read queued behind another session's ACCESS EXCLUSIVE: exit 3 with the reason, nothing guessed."""
    create_plain_table(conn, modulus=10)
    conn.execute("CREATE INDEX chunks_key_expr ON chunks ((abs(hashtext(collection_id::text) % 10)))")
    with psycopg.connect(dsn) as holder:
        holder.execute("LOCK TABLE chunks IN ACCESS EXCLUSIVE MODE")
        run = cli(dsn, "verify", "--lock-timeout", "0.2")
        holder.rollback()
    assert run.code == ExitCode.DATABASE, run.err
    assert run.err.splitlines()[-1] == (
        "partkey-migrate: could not read the key formula of public.chunks: canceling statement due to lock timeout; "
        "retry or pass --key-expression"
    )

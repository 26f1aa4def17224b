"""partkey_key_formula_overflow from the parsed formula, wherever it lives: trigger (IF and COALESCE branches),
generated column, CHECK, key helper function and partition expression; comments and lookalikes do not count."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from exporter.introspect import detect
from exporter.keyspec import KeySpec

pytestmark = pytest.mark.versioned("overflow gauge from the parsed formula")

TABLE = "CREATE TABLE chunks (id bigint, collection_id text, document_id text, partition_key integer{})"
SAFE = "abs(hashtext(collection_id) % 100)"
LEGACY = "abs(hashtext(collection_id)) % 100"


def _trigger(conn: psycopg.Connection[Any], body: str) -> None:
    """A plain chunks table keyed by a BEFORE INSERT trigger with this PL/pgSQL body."""
    conn.execute(TABLE.format(""))
    conn.execute(
        sql.SQL("CREATE FUNCTION compute_partition_key() RETURNS trigger LANGUAGE plpgsql AS {}").format(
            sql.Literal(body)
        )
    )
    conn.execute(
        "CREATE TRIGGER set_partition_key BEFORE INSERT OR UPDATE ON chunks "
        "FOR EACH ROW EXECUTE PROCEDURE compute_partition_key()"
    )


def _overflow(conn: psycopg.Connection[Any]) -> bool:
    return detect(conn, KeySpec(source_column="collection_id", auto=True)).formula_overflow


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # Only the ELSE branch overflows: still an overflow.
        (
            "BEGIN IF NEW.document_id IS NULL THEN NEW.partition_key := abs(hashtext(NEW.collection_id) % 100);"
            " ELSE NEW.partition_key := abs(hashtext(NEW.collection_id || ':' || NEW.document_id)) % 100;"
            " END IF; RETURN NEW; END",
            True,
        ),
        (
            "BEGIN NEW.partition_key := abs(hashtext(COALESCE(NEW.document_id, NEW.collection_id))) % 100;"
            " RETURN NEW; END",
            True,
        ),
        # A cast between abs() and hashtext() is still abs() of hashtext().
        ("BEGIN NEW.partition_key := abs((hashtext(NEW.collection_id))::int) % 100; RETURN NEW; END", True),
        # The old formula in a comment and a string is not code.
        (
            "BEGIN -- was abs(hashtext(NEW.collection_id)) % 100\n"
            " RAISE DEBUG 'abs(hashtext(x)) %', 1;"
            " NEW.partition_key := abs(hashtext(NEW.collection_id) % 100); RETURN NEW; END",
            False,
        ),
        ("BEGIN NEW.partition_key := abs(hashtext(NEW.collection_id) % 100); RETURN NEW; END", False),
    ],
    ids=["if-else-branch", "coalesce", "cast", "comment-and-string", "safe"],
)
def test_trigger_body(conn: psycopg.Connection[Any], body: str, expected: bool) -> None:
    _trigger(conn, body)
    info = detect(conn, KeySpec(auto=True))
    assert info.method == "trigger"
    assert info.formula_overflow is expected
    assert [t.overflows for t in info.triggers] == [expected]


def test_check_constraint(conn: psycopg.Connection[Any]) -> None:
    conn.execute(TABLE.format(""))
    conn.execute(f"ALTER TABLE chunks ADD CONSTRAINT k CHECK (partition_key = {LEGACY})")
    info = detect(conn, KeySpec(auto=True))
    assert (info.method, [c.overflows for c in info.checks], info.formula_overflow) == ("check", [True], True)
    conn.execute("ALTER TABLE chunks DROP CONSTRAINT k")
    conn.execute(f"ALTER TABLE chunks ADD CONSTRAINT k CHECK (partition_key = {SAFE})")
    info = detect(conn, KeySpec(auto=True))
    assert (info.method, [c.overflows for c in info.checks], info.formula_overflow) == ("check", [False], False)


def test_generated_column(conn: psycopg.Connection[Any]) -> None:
    if conn.info.server_version < 120000:
        pytest.skip("GENERATED columns need PG 12")
    conn.execute(
        TABLE.format("").replace(
            "partition_key integer", f"partition_key integer GENERATED ALWAYS AS ({LEGACY}) STORED"
        )
    )
    assert _overflow(conn) is True
    conn.execute("DROP TABLE chunks")
    conn.execute(
        TABLE.format("").replace("partition_key integer", f"partition_key integer GENERATED ALWAYS AS ({SAFE}) STORED")
    )
    assert _overflow(conn) is False


def test_partition_expression(conn: psycopg.Connection[Any]) -> None:
    conn.execute(TABLE.format("") + f" PARTITION BY LIST (({LEGACY}))")
    info = detect(conn, KeySpec(auto=True))
    assert (info.shape, info.formula_overflow) == ("expression", True)
    conn.execute("DROP TABLE chunks")
    conn.execute(TABLE.format("") + f" PARTITION BY LIST (({SAFE}))")
    assert detect(conn, KeySpec(auto=True)).formula_overflow is False


def test_key_helper_function(conn: psycopg.Connection[Any]) -> None:
    """A safe trigger, but the helper the application asks for its key overflows: the gauge says 1."""
    _trigger(conn, "BEGIN NEW.partition_key := abs(hashtext(NEW.collection_id) % 100); RETURN NEW; END")
    assert _overflow(conn) is False
    conn.execute(
        "CREATE FUNCTION get_partition_key(collection_id text) RETURNS integer LANGUAGE sql IMMUTABLE "
        "AS $$ SELECT abs(hashtext(collection_id)) % 100 $$"
    )
    info = detect(conn, KeySpec(auto=True))
    assert info.formula_overflow is True
    assert [t.overflows for t in info.triggers] == [False]
    helpers = [p for p in info.formulas.places if p.kind == "helper"] if info.formulas else []
    assert [(p.name, p.formula.overflows if p.formula else None) for p in helpers] == [
        ("function public.get_partition_key()", True)
    ]

"""The catalog reads on every PostgreSQL version (11-18): pg_get_functiondef, pg_get_expr and
pg_get_partkeydef print formulas differently across versions; the normalised forms must not differ."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from exporter.formula_catalog import discover_tables, schema_overflows, table_formulas
from exporter.keyspec import KeySpec
from tests.schema import create_list_table, create_plain_table

pytestmark = pytest.mark.versioned("formula catalog reads")

DB003 = "abs(hashtext(collection_id) % 10)"
COMPOSITE = "abs(hashtext(collection_id || ':' || COALESCE(content, id, 'null')) % 10)"


def _places(conn: psycopg.Connection[Any], table: str = "chunks") -> dict[str, tuple[str | None, bool | None, bool]]:
    found = table_formulas(conn, KeySpec(table=table))
    assert found is not None
    return {p.name: (p.normalised, p.agrees, bool(p.formula and p.formula.overflows)) for p in found.places}


def test_db003_trigger_helper_and_check(conn: psycopg.Connection[Any]) -> None:
    """The DB-003 trigger (on the parent on 13+, on each partition on 11/12), a composite CHECK that disagrees,
    and an SQL helper with the overflowing formula: exact forms, verdicts and overflow count."""
    major = conn.info.server_version // 10000
    create_list_table(conn, modulus=10, trigger="parent" if major >= 13 else "partitions")
    conn.execute(
        "ALTER TABLE chunks ADD CONSTRAINT chunks_key_check CHECK (partition_key = abs(hashtext("
        "collection_id::text || ':' || COALESCE(content, id::text, 'null')) % 10)) NOT VALID"
    )
    conn.execute(
        "CREATE FUNCTION get_partition_key(collection_id uuid) RETURNS integer LANGUAGE sql IMMUTABLE "
        "AS $$ SELECT abs(hashtext(collection_id::text)) % 10 $$"
    )
    places = _places(conn)
    assert places == {
        "trigger set_partition_key -> public.compute_partition_key()": (DB003, True, True),
        "CHECK chunks_key_check": (COMPOSITE, False, False),
        "function public.get_partition_key()": (DB003, True, True),
    }
    overflows = {(p.kind, p.name): p.count for p in schema_overflows(conn, "public")}
    assert overflows == {
        ("function", "public.compute_partition_key()"): 1,
        ("function", "public.get_partition_key()"): 1,
    }
    assert [(d.table, d.key_column, d.formula.normalised) for d in discover_tables(conn, "public")] == [
        ("chunks", "partition_key", DB003)
    ]


def test_generated_column_and_index_expression(conn: psycopg.Connection[Any]) -> None:
    """A STORED generated key (PG 12+) or a CHECK (PG 11), and an index on the overflowing formula."""
    major = conn.info.server_version // 10000
    create_plain_table(conn, modulus=10, key="generated" if major >= 12 else "check")
    conn.execute("CREATE INDEX chunks_legacy_key ON chunks ((abs(hashtext(collection_id::text)) % 10))")
    places = _places(conn)
    maintainer = "column partition_key" if major >= 12 else next(n for n in places if n.startswith("CHECK"))
    assert places[maintainer] == (DB003, True, False)
    assert places["index chunks_legacy_key"] == (DB003, True, True)
    found = table_formulas(conn, KeySpec())
    assert found is not None and found.maintained_by == maintainer and not found.drift
    assert {(p.kind, p.name) for p in schema_overflows(conn, "public")} == {("index", "chunks_legacy_key")}

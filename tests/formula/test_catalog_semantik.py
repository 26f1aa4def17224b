"""The real application's DDL: every formula read, the drift with the helper named, the overflows counted."""

from __future__ import annotations

from typing import Any

import psycopg

from exporter.formula_catalog import discover_tables, resolve_spec, schema_overflows, table_formulas
from exporter.keyspec import KeySpec
from tests.formula.semantik import COMPOSITE, HELPER, create_semantik


def test_semantik_places_drift_and_consequence(conn: psycopg.Connection[Any]) -> None:
    """The trigger's composite formula keys rows; get_partition_key() disagrees and the report says what follows."""
    create_semantik(conn, partitions=4)
    found = table_formulas(conn, KeySpec())
    assert found is not None
    places = {(p.kind, p.name): p for p in found.places}
    trigger = places[("trigger", "trigger set_partition_key -> public.compute_partition_key()")]
    helper = places[("helper", "function public.get_partition_key()")]
    assert trigger.normalised == COMPOSITE
    assert trigger.formula is not None and trigger.formula.overflows
    assert trigger.formula.columns == ("collection_id", "document_id", "chunk_index", "id")
    assert helper.normalised == HELPER and helper.agrees is False
    assert found.table_formula is not None and found.table_formula.normalised == COMPOSITE
    assert found.maintained_by == trigger.name
    assert found.drift is True
    # get_partition_for_collection() holds a subquery: not a key helper, but its overflow still counts.
    assert [k for k in places if k[1].startswith("function public.get_partition_for_collection")] == []
    moving = [f for f in found.findings if "get_partition_key" in f and "moving row" in f]
    assert len(moving) == 1
    assert "the trigger recomputes the key with a different formula than the application sends" in moving[0]
    assert "moving row to another partition" in moving[0]


def test_semantik_overflow_count_and_discovery(conn: psycopg.Connection[Any]) -> None:
    """Three functions overflow (trigger function x2 branches, both helpers); discovery finds chunks by its trigger."""
    create_semantik(conn, partitions=4)
    overflows = {(p.kind, p.name): p.count for p in schema_overflows(conn, "public")}
    assert overflows == {
        ("function", "public.compute_partition_key()"): 2,
        ("function", "public.get_partition_for_collection()"): 1,
        ("function", "public.get_partition_key()"): 1,
    }
    discovered = discover_tables(conn, "public")
    assert [(d.schema, d.table, d.key_column, d.formula.normalised) for d in discovered] == [
        ("public", "chunks", "partition_key", COMPOSITE)
    ]


def test_auto_spec_takes_the_composite_formula(conn: psycopg.Connection[Any]) -> None:
    """key_expression: auto resolves to the trigger's formula, in its safe form, over all four source columns."""
    create_semantik(conn, partitions=4)
    spec = resolve_spec(conn, KeySpec(auto=True))
    assert spec.source_columns == ("collection_id", "document_id", "chunk_index", "id")
    expression = spec.expression().as_string(conn)
    assert expression == (
        'abs(hashtext(("collection_id"::text || \':\'::text || COALESCE("document_id"::text, '
        '"chunk_index"::text, "id"::text, \'null\'::text))::text) % 100)'
    )
    row = conn.execute(
        "SELECT " + expression + " FROM (VALUES ('c1'::varchar, NULL::varchar, 7, 9::bigint)) "
        "AS v(collection_id, document_id, chunk_index, id)"
    ).fetchone()
    assert row is not None
    assert row[0] == spec.key_formula.key({"collection_id": "c1", "document_id": None, "chunk_index": "7", "id": "9"})

"""KeySpec.expression() holds the modulo `%`: with placeholders=True it runs beside bound %s parameters."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from exporter.formula import parse_source
from exporter.keyspec import KeyFormula, KeySpec

COMPOSITE = parse_source("collection_id || ':' || COALESCE(document_id, 'null')")
ROWS = [("c-1", "d-1"), ("Ω-collection", None), ("", "")]


@pytest.mark.parametrize("formula", ["safe", "legacy"])
@pytest.mark.parametrize("composite", [False, True], ids=["column", "composite"])
def test_expression_with_bound_parameters(conn: psycopg.Connection[Any], formula: KeyFormula, composite: bool) -> None:
    spec = KeySpec(modulus=7, formula=formula, source=COMPOSITE if composite else None)
    row = sql.SQL("(SELECT %s::varchar AS collection_id, %s::text AS document_id) AS v")
    for collection_id, document_id in ROWS:
        bound = sql.SQL("SELECT {} FROM {}").format(spec.expression(placeholders=True), row)
        got = conn.execute(bound, (collection_id, document_id)).fetchone()
        values = {"collection_id": collection_id, "document_id": document_id}
        assert got == (spec.key_formula.key(values),)
        # Without parameters the same expression is sent as it is, with a single `%`.
        literal = sql.SQL("SELECT {} FROM (SELECT {}::varchar AS collection_id, {}::text AS document_id) AS v")
        query = literal.format(spec.expression(), sql.Literal(collection_id), sql.Literal(document_id))
        assert conn.execute(query).fetchone() == got


def test_bare_percent_with_parameters_is_refused_by_psycopg(conn: psycopg.Connection[Any]) -> None:
    """Why the option exists: psycopg takes the bare `%` of the modulo for a placeholder."""
    query = sql.SQL("SELECT {} FROM (SELECT %s::text AS collection_id) AS v").format(KeySpec().expression())
    with pytest.raises(psycopg.ProgrammingError, match="placeholder"):
        conn.execute(query, ("c-1",))

"""The issue's 'done when', on the real application's DDL: the report names the composite formula and the
helper's disagreement, and verify counts exactly the rows wrong under the table's real formula."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from exporter.cli import main
from exporter.formula import parse_expression
from tests.formula.semantik import COMPOSITE, HELPER, create_semantik


def _load_rows(conn: psycopg.Connection[Any]) -> int:
    """Rows keyed by the trigger, plus rows keyed by the helper (as the application sends them); returns how
    many of the helper's keys differ from the trigger's formula."""
    # Rows are routed before the trigger runs, so a row must arrive with its key: these carry the right one.
    conn.execute(
        "INSERT INTO chunks (collection_id, document_id, chunk_index, content, partition_key) "
        "SELECT c, d, g, 'x', abs(hashtext(c || ':' || COALESCE(d, g::text)) % 100) "
        "FROM generate_series(1, 300) g, LATERAL (SELECT 'col-' || (g % 7) AS c, "
        "CASE WHEN g % 3 = 0 THEN NULL ELSE 'doc-' || g END AS d) v"
    )
    # The application computes the key with get_partition_key() and sends it; the trigger is bypassed here so
    # the rows land as the application meant them (on PG 13+ most such INSERTs fail with the trigger on).
    conn.execute("ALTER TABLE chunks DISABLE TRIGGER set_partition_key")
    conn.execute(
        "INSERT INTO chunks (collection_id, document_id, chunk_index, content, partition_key) "
        "SELECT 'app-' || g, 'doc-' || g, 0, 'y', get_partition_key(('app-' || g)::varchar) "
        "FROM generate_series(1, 200) g"
    )
    conn.execute("ALTER TABLE chunks ENABLE TRIGGER set_partition_key")
    real = parse_expression(COMPOSITE)
    rows = conn.execute(
        "SELECT collection_id, document_id, chunk_index::text, id::text, partition_key FROM chunks"
    ).fetchall()
    wrong = 0
    for collection_id, document_id, chunk_index, row_id, stored in rows:
        values = {"collection_id": collection_id, "document_id": document_id, "chunk_index": chunk_index, "id": row_id}
        wrong += real.key(values) != stored
    return wrong


def test_report_and_verify_on_the_real_schema(
    conn: psycopg.Connection[Any], dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Text report, JSON report and verify: the composite formula, the helper's drift, and the exact count."""
    create_semantik(conn)
    wrong = _load_rows(conn)
    assert 150 < wrong < 200  # about 99 in 100 helper keys differ; none of the trigger's do

    assert main(["report", "--dsn", dsn, "--no-chart"]) == 0
    text = capsys.readouterr().out
    assert f"  Key Formula: {COMPOSITE} (from trigger set_partition_key -> public.compute_partition_key())" in text
    assert "  Key Source Columns: collection_id, document_id, chunk_index, id" in text
    assert f"    - function public.get_partition_key(): {HELPER} [DISAGREES]" in text
    assert "  Formula Drift: YES" in text
    assert "the trigger recomputes the key with a different formula than the application sends" in text
    assert "moving row to another partition during a BEFORE FOR EACH ROW trigger is not supported" in text
    assert "  Overflowing Formulas in Schema public: 3 (" in text
    assert f"  Incorrect Keys: {wrong:,}" in text

    assert main(["report", "--dsn", dsn, "--format", "json"]) == 0
    table = json.loads(capsys.readouterr().out)["tables"][0]
    formulas = table["implementation"]["formulas"]
    assert formulas["table_formula"] == COMPOSITE and formulas["drift"] is True
    assert {(p["name"], p["normalised"], p["agrees"]) for p in formulas["places"]} == {
        ("trigger set_partition_key -> public.compute_partition_key()", COMPOSITE, True),
        ("function public.get_partition_key()", HELPER, False),
    }
    assert table["implementation"]["schema_overflow_count"] == 3
    assert table["verification"]["mismatched"] == wrong

    assert main(["verify", "--dsn", dsn]) == 1
    assert f"{wrong} wrong keys" in capsys.readouterr().out

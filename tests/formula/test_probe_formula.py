"""The insert probe keys its row by the table's real formula, and reports a failing INSERT's SQLSTATE."""

from __future__ import annotations

from typing import Any

import psycopg

from exporter.app import Exporter
from tests.formula.semantik import create_semantik
from tests.schema import scalar
from tests.support import config_for

VALUES = "extra_values: {document_id: doc-1, chunk_index: '3', content: probe}"
PROBE = "checks:\n  insert_probe: {enabled: true, samples: 2, source_value: col-1, " + VALUES + "}"


def _probe(dsn: str, table_yaml: str) -> Exporter:
    exporter = Exporter(config_for(dsn, table_yaml))
    exporter.runners[("t1", "public.chunks", "insert_probe")].run()
    return exporter


def test_probe_uses_the_composite_formula(conn: psycopg.Connection[Any], dsn: str) -> None:
    """key_expression: auto sends the key the trigger computes, so the INSERT goes through (and is rolled back)."""
    create_semantik(conn)
    exporter = _probe(dsn, PROBE)
    result = exporter.store.latest("t1", "public.chunks", "insert_probe")
    assert result is not None and result.success, result.error if result else None
    assert scalar(conn, "SELECT count(*) FROM chunks") == 0
    exporter.stop()


def test_probe_with_the_helpers_key_reports_the_moving_row_error(conn: psycopg.Connection[Any], dsn: str) -> None:
    """Sending get_partition_key()'s key, as the application does, fails; the report shows SQLSTATE and DETAIL."""
    create_semantik(conn)
    helper = "key_expression: 'abs(hashtext(collection_id::text)) % 100'\n"
    exporter = _probe(dsn, helper + PROBE)
    result = exporter.store.latest("t1", "public.chunks", "insert_probe")
    assert result is not None and not result.success
    assert result.error is not None
    assert result.error.startswith(
        "INSERT failed: SQLSTATE 0A000: moving row to another partition during a BEFORE FOR EACH ROW trigger "
        'is not supported (DETAIL: Before executing trigger "set_partition_key", the row was to be in partition '
        '"public.chunks_part_'
    )
    exporter.stop()

"""Verification counts wrong, NULL and erroring keys exactly, in every mode."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from exporter.keyspec import KeySpec
from exporter.verify import Verifier, current_watermark
from tests.schema import (
    INT_MIN_COLLECTION_ID,
    RANDOM_UUID,
    create_list_table,
    create_plain_table,
    insert_rows,
    scalar,
)

pytestmark = pytest.mark.versioned("verification")


def _stale_keys(conn: psycopg.Connection[Any], count: int) -> None:
    """Move collection ids under existing rows without fixing the key, as production drift does."""
    conn.execute(
        f"UPDATE chunks SET collection_id = {RANDOM_UUID} WHERE id IN (SELECT id FROM chunks ORDER BY id LIMIT {count})"
    )


def test_full_counts_stale_keys_exactly(conn: psycopg.Connection[Any]) -> None:
    create_list_table(conn, modulus=10, trigger=None)
    insert_rows(conn, 1000, modulus=10)
    _stale_keys(conn, 7)
    spec = KeySpec(modulus=10)
    result = Verifier(conn, spec, primary_key=("id", "collection_id", "partition_key")).run("full")
    # A random uuid keeps the same key with probability 1/10: recount what really changed.
    expected = scalar(
        conn, "SELECT count(*) FROM chunks WHERE partition_key <> abs(hashtext(collection_id::text) % 10)"
    )
    assert result.rows_checked == 1000
    assert result.mismatched == expected
    assert result.null_keys == 0 and result.expression_errors == 0
    assert len(result.examples) == min(expected, 10)
    assert all(e.kind == "mismatch" and e.stored_key != e.expected_key for e in result.examples)


def test_null_keys_and_expression_errors_counted_apart(conn: psycopg.Connection[Any]) -> None:
    create_plain_table(conn, key="none", modulus=10)
    insert_rows(conn, 300, modulus=10)
    conn.execute("UPDATE chunks SET partition_key = NULL WHERE id IN (1, 2, 3)")
    conn.execute("UPDATE chunks SET partition_key = 99 WHERE id IN (10, 11)")
    spec = KeySpec(modulus=10)
    result = Verifier(conn, spec, primary_key=("id",)).run("full")
    counts = (result.rows_checked, result.null_keys, result.mismatched, result.expression_errors)
    assert counts == (300, 3, 2, 0)
    assert {e.primary_key["id"] for e in result.examples if e.kind == "null"} == {"1", "2", "3"}


def test_incremental_sees_only_new_rows(conn: psycopg.Connection[Any]) -> None:
    create_list_table(conn, modulus=10, trigger=None)
    insert_rows(conn, 500, modulus=10)
    conn.execute(f"UPDATE chunks SET collection_id = {RANDOM_UUID} WHERE id <= 50")
    spec = KeySpec(modulus=10)
    verifier = Verifier(conn, spec)
    first = current_watermark(conn, spec, "id")
    insert_rows(conn, 200, modulus=10)
    conn.execute(
        f"INSERT INTO chunks (collection_id, partition_key) SELECT {RANDOM_UUID}, 3 FROM generate_series(1, 40)"
    )
    upto = current_watermark(conn, spec, "id")
    result = verifier.run("incremental", watermark_column="id", after=first, upto=upto)
    wrong_new = scalar(
        conn,
        "SELECT count(*) FROM chunks WHERE id > %s AND partition_key <> abs(hashtext(collection_id::text) %% 10)",
        (first,),
    )
    assert result.rows_checked == 240
    assert result.mismatched == wrong_new
    assert result.watermark == upto


def test_sample_checks_a_subset(conn: psycopg.Connection[Any]) -> None:
    create_plain_table(conn, key="none", modulus=10)
    insert_rows(conn, 20000, modulus=10)
    result = Verifier(conn, KeySpec(modulus=10)).run("sample", sample_percent=10)
    assert 0 < result.rows_checked < 20000
    assert result.mismatched == 0


def test_rows_whose_expression_errors_are_counted_not_fatal(
    conn: psycopg.Connection[Any], does: Callable[[str, str], None]
) -> None:
    """The legacy formula raises on a collection id hashing to INT_MIN; such rows count as errors."""
    create_plain_table(conn, key="none", modulus=100)
    insert_rows(conn, 3000, modulus=100)
    conn.execute(
        "INSERT INTO chunks (id, collection_id, partition_key) VALUES (5000, %s, 48), (5001, %s, 48)",
        (INT_MIN_COLLECTION_ID, INT_MIN_COLLECTION_ID),
    )
    conn.execute("UPDATE chunks SET partition_key = (partition_key + 1) % 100 WHERE id IN (7, 2999)")
    result = Verifier(conn, KeySpec(formula="legacy"), primary_key=("id",), examples_limit=20).run("full")
    assert (result.rows_checked, result.expression_errors, result.mismatched) == (3002, 2, 2)
    errors = [e for e in result.examples if e.kind == "error"]
    assert {e.primary_key["id"] for e in errors} == {"5000", "5001"}
    assert "integer out of range" in (errors[0].error or "")
    safe = Verifier(conn, KeySpec(formula="safe"), primary_key=("id",)).run("full")
    assert (safe.rows_checked, safe.expression_errors, safe.mismatched) == (3002, 0, 2)
    does("`partkey-exporter` verification, INT_MIN id, legacy formula", "row counted as an expression error, not fatal")

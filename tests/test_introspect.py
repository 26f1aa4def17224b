"""Implementation detection against real catalogs, one table shape at a time."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from exporter.introspect import TableNotFoundError, detect
from exporter.keyspec import KeySpec
from tests.schema import SAFE, create_list_table, create_plain_table

SPEC = KeySpec()


def test_list_table_with_parent_trigger_is_trigger_and_not_optimal(conn: psycopg.Connection[Any]) -> None:
    create_list_table(conn, modulus=10, trigger="parent", default_partition=True)
    info = detect(conn, KeySpec(modulus=10))
    assert info.shape == "list"
    assert info.partitioned_by_key_column
    assert info.partition_count == 11
    assert info.has_default_partition
    assert info.method == "trigger"
    assert info.trigger_location == "parent"
    assert info.trigger_enabled is True
    assert info.formula_overflow is True
    assert info.optimal is False
    assert "INT_MIN" in info.reason
    assert info.primary_key == ("id", "collection_id", "partition_key")


def test_per_partition_trigger_is_found_and_missing_partitions_named(conn: psycopg.Connection[Any]) -> None:
    create_list_table(conn, modulus=4, trigger="partitions")
    conn.execute("CREATE TABLE chunks_default PARTITION OF chunks DEFAULT")
    info = detect(conn, KeySpec(modulus=4))
    assert info.method == "trigger"
    assert info.trigger_location == "partitions"
    assert info.partitions_missing_trigger == ("chunks_default",)


def test_disabled_trigger_is_reported(conn: psycopg.Connection[Any]) -> None:
    create_list_table(conn, modulus=2, trigger="parent")
    conn.execute("ALTER TABLE chunks DISABLE TRIGGER set_partition_key")
    info = detect(conn, KeySpec(modulus=2))
    assert info.trigger_enabled is False
    assert info.optimal is False


def test_list_table_with_check_is_optimal(conn: psycopg.Connection[Any]) -> None:
    create_list_table(conn, modulus=3, trigger=None)
    conn.execute(f"ALTER TABLE chunks ADD CONSTRAINT chunks_partition_key_check CHECK (partition_key = {SAFE.format(modulus=3)})")
    info = detect(conn, KeySpec(modulus=3))
    assert (info.method, info.optimal, info.formula_overflow) == ("check", True, False)
    assert info.checks[0].validated is True


def test_list_table_with_nothing(conn: psycopg.Connection[Any]) -> None:
    create_list_table(conn, modulus=3, trigger=None)
    info = detect(conn, KeySpec(modulus=3))
    assert (info.method, info.optimal) == ("none", False)


@pytest.mark.parametrize(
    ("key", "method", "optimal"),
    [("generated", "generated", True), ("trigger", "trigger", False), ("check", "check", False), ("none", "none", False)],
)
def test_plain_table_kinds(conn: psycopg.Connection[Any], key: str, method: str, optimal: bool) -> None:
    create_plain_table(conn, key=key)
    info = detect(conn, SPEC)
    assert info.shape == "plain"
    assert (info.method, info.optimal) == (method, optimal)
    if key == "generated":
        assert info.generated_kind == "stored"
        assert info.formula_overflow is False


def test_virtual_generated_column_pg18(conn: psycopg.Connection[Any]) -> None:
    if conn.info.server_version < 180000:
        pytest.skip("VIRTUAL generated columns need PostgreSQL 18")
    create_plain_table(conn, key="virtual")
    info = detect(conn, SPEC)
    assert (info.method, info.generated_kind, info.optimal) == ("generated", "virtual", False)
    assert "VIRTUAL" in info.reason


def test_hash_partitioned_table(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE chunks (id bigint, collection_id uuid, PRIMARY KEY (id, collection_id)) PARTITION BY HASH (collection_id)")
    for r in range(4):
        conn.execute(f"CREATE TABLE chunks_h{r} PARTITION OF chunks FOR VALUES WITH (MODULUS 4, REMAINDER {r})")
    info = detect(conn, SPEC)
    assert (info.shape, info.method, info.optimal, info.partition_count) == ("hash", "hash", True, 4)
    assert info.key_column_exists is False


def test_expression_partitioned_table_with_legacy_formula(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE chunks (id bigint, collection_id uuid) PARTITION BY LIST ((abs(hashtext(collection_id::text)) % 2))")
    conn.execute("CREATE TABLE chunks_0 PARTITION OF chunks FOR VALUES IN (0)")
    conn.execute("CREATE TABLE chunks_1 PARTITION OF chunks FOR VALUES IN (1)")
    info = detect(conn, SPEC)
    assert (info.shape, info.method, info.formula_overflow, info.optimal) == ("expression", "expression", True, False)


def test_missing_table_raises(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(TableNotFoundError, match="public.chunks does not exist"):
        detect(conn, SPEC)

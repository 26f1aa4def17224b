"""Implementation detection against real catalogs, one table shape at a time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from exporter.introspect import TableNotFoundError, detect
from exporter.keyspec import KeySpec
from tests.schema import SAFE, create_list_table, create_plain_table

pytestmark = pytest.mark.versioned("implementation detection")

SPEC = KeySpec()
Does = Callable[[str, str], None]
PARENT_TRIGGER = "`partkey-exporter` detection, LIST table, trigger on the parent"
VIRTUAL_KEY = "`partkey-exporter` detection, VIRTUAL generated key"


def _parent_trigger_refused(conn: psycopg.Connection[Any], **table: Any) -> bool:
    """Create a LIST table with the trigger on the parent; on PG 11/12 assert the server's refusal instead."""
    if conn.info.server_version >= 130000:
        create_list_table(conn, trigger="parent", **table)
        return False
    with pytest.raises(psycopg.errors.WrongObjectType) as refused:
        create_list_table(conn, trigger="parent", **table)
    assert refused.value.diag.message_primary == '"chunks" is a partitioned table'
    detail = "Partitioned tables cannot have BEFORE / FOR EACH ROW triggers."
    assert refused.value.diag.message_detail == detail
    return True


def _syntax_error(error: pytest.ExceptionInfo[psycopg.errors.SyntaxError]) -> str | None:
    """The server's primary message of a syntax error, without the LINE/caret context."""
    return error.value.diag.message_primary


def test_list_table_with_parent_trigger_is_trigger_and_not_optimal(conn: psycopg.Connection[Any], does: Does) -> None:
    if _parent_trigger_refused(conn, modulus=10, default_partition=True):
        does(PARENT_TRIGGER, "server refuses such a trigger (one per partition)")
        return
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
    # 13+ clones the parent's trigger to every partition, the DEFAULT one included.
    assert info.partitions_missing_trigger == ()
    clones = conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname = 'set_partition_key'").fetchone()
    assert clones == (12,)
    does(PARENT_TRIGGER, "on parent (cloned to 11 partitions), overflow flagged")


def test_per_partition_trigger_is_found_and_missing_partitions_named(conn: psycopg.Connection[Any], does: Does) -> None:
    create_list_table(conn, modulus=4, trigger="partitions")
    conn.execute("CREATE TABLE chunks_default PARTITION OF chunks DEFAULT")
    info = detect(conn, KeySpec(modulus=4))
    assert info.method == "trigger"
    assert info.trigger_location == "partitions"
    assert info.partitions_missing_trigger == ("chunks_default",)
    does("`partkey-exporter` detection, LIST table, trigger on each partition", "found; partitions without it named")


def test_disabled_parent_trigger_is_reported(conn: psycopg.Connection[Any]) -> None:
    if _parent_trigger_refused(conn, modulus=2):
        return
    conn.execute("ALTER TABLE chunks DISABLE TRIGGER set_partition_key")
    info = detect(conn, KeySpec(modulus=2))
    assert (info.trigger_location, info.trigger_enabled, info.optimal) == ("parent", False, False)


def test_one_disabled_partition_trigger_is_reported(conn: psycopg.Connection[Any]) -> None:
    create_list_table(conn, modulus=2, trigger="partitions")
    conn.execute("ALTER TABLE chunks_part_01 DISABLE TRIGGER set_partition_key")
    info = detect(conn, KeySpec(modulus=2))
    assert (info.trigger_location, info.trigger_enabled, info.optimal) == ("partitions", False, False)
    found = [(t.relation, t.enabled) for t in info.triggers]
    assert found == [("chunks_part_00", True), ("chunks_part_01", False)]


def test_list_table_with_check_is_optimal(conn: psycopg.Connection[Any]) -> None:
    create_list_table(conn, modulus=3, trigger=None)
    conn.execute(
        f"ALTER TABLE chunks ADD CONSTRAINT chunks_partition_key_check CHECK (partition_key = {SAFE.format(modulus=3)})"
    )
    info = detect(conn, KeySpec(modulus=3))
    assert (info.method, info.optimal, info.formula_overflow) == ("check", True, False)
    assert info.checks[0].validated is True


def test_list_table_with_nothing(conn: psycopg.Connection[Any]) -> None:
    create_list_table(conn, modulus=3, trigger=None)
    info = detect(conn, KeySpec(modulus=3))
    assert (info.method, info.optimal) == ("none", False)


@pytest.mark.parametrize(
    ("key", "method", "optimal"),
    [
        ("generated", "generated", True),
        ("trigger", "trigger", False),
        ("check", "check", False),
        ("none", "none", False),
    ],
)
def test_plain_table_kinds(conn: psycopg.Connection[Any], key: str, method: str, optimal: bool) -> None:
    pg11 = conn.info.server_version < 120000
    if key == "generated" and pg11:
        with pytest.raises(psycopg.errors.SyntaxError) as refused:
            create_plain_table(conn, key=key)
        assert _syntax_error(refused) == 'syntax error at or near "("'
        return
    create_plain_table(conn, key=key)
    info = detect(conn, SPEC)
    assert info.shape == "plain"
    if key == "check" and pg11:
        # Without GENERATED columns a CHECK (safe formula) is the best PG 11 allows.
        optimal = True
        assert info.reason == ("PostgreSQL 11 has no GENERATED columns; a trigger or CHECK is the best it allows")
    assert (info.method, info.optimal) == (method, optimal)
    if key == "generated":
        assert info.generated_kind == "stored"
        assert info.formula_overflow is False
    if key == "trigger":
        assert info.formula_overflow is True
        assert "INT_MIN" in info.reason


def test_virtual_generated_column_only_on_pg18(conn: psycopg.Connection[Any], does: Does) -> None:
    version = conn.info.server_version
    if version < 180000:
        with pytest.raises(psycopg.errors.SyntaxError) as refused:
            create_plain_table(conn, key="virtual")
        near = '"("' if version < 120000 else '"VIRTUAL"'
        assert _syntax_error(refused) == f"syntax error at or near {near}"
        does(VIRTUAL_KEY, f"no such column here (server: syntax error at or near {near})")
        return
    create_plain_table(conn, key="virtual")
    info = detect(conn, SPEC)
    assert (info.method, info.generated_kind, info.optimal) == ("generated", "virtual", False)
    assert "VIRTUAL" in info.reason
    does(VIRTUAL_KEY, "detected, reported not optimal (not indexable, so not a key)")


def test_hash_partitioned_table(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "CREATE TABLE chunks (id bigint, collection_id uuid, PRIMARY KEY (id, collection_id)) "
        "PARTITION BY HASH (collection_id)"
    )
    for r in range(4):
        conn.execute(f"CREATE TABLE chunks_h{r} PARTITION OF chunks FOR VALUES WITH (MODULUS 4, REMAINDER {r})")
    info = detect(conn, SPEC)
    assert (info.shape, info.method, info.optimal, info.partition_count) == ("hash", "hash", True, 4)
    assert info.key_column_exists is False


def test_expression_partitioned_table_with_legacy_formula(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "CREATE TABLE chunks (id bigint, collection_id uuid) "
        "PARTITION BY LIST ((abs(hashtext(collection_id::text)) % 2))"
    )
    conn.execute("CREATE TABLE chunks_0 PARTITION OF chunks FOR VALUES IN (0)")
    conn.execute("CREATE TABLE chunks_1 PARTITION OF chunks FOR VALUES IN (1)")
    info = detect(conn, SPEC)
    assert (info.shape, info.method, info.formula_overflow, info.optimal) == (
        "expression",
        "expression",
        True,
        False,
    )


def test_missing_table_raises(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(TableNotFoundError, match=r"^table public\.chunks does not exist$"):
        detect(conn, SPEC)

"""Verification reads the table's formula and inputs once, and again exactly when the catalog behind them changes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import psycopg
import pytest

from exporter.app import Exporter
from exporter.chunks_schema import LEGACY_TRIGGER_FUNCTION
from exporter.introspect import TableNotFoundError
from exporter.keyspec import KeySpec
from exporter.spec_cache import SpecCache
from exporter.verify import VerificationResult
from tests.schema import create_list_table, insert_rows
from tests.support import config_for

# The fingerprint reads catalog columns (xmin, oids, pg_attrdef, pg_trigger): it must hold on every version.
pytestmark = pytest.mark.versioned("verification spec cache")

FULL = ("only", "public.chunks", "verification_full")
INCREMENTAL = ("only", "public.chunks", "verification_incremental")


@pytest.fixture
def watched(conn: psycopg.Connection[Any], dsn: str) -> Iterator[Exporter]:
    """A LIST table keyed by a % 5 trigger on each partition (PG 11-12 refuse one on the parent), key auto."""
    create_list_table(conn, modulus=5, trigger="partitions")
    insert_rows(conn, 100, modulus=5)
    exporter = Exporter(config_for(dsn, "modulus: 5\nmonotonic_column: id", name="only"))
    try:
        yield exporter
    finally:
        exporter.stop()


def cache(exporter: Exporter) -> SpecCache:
    """The table's spec cache (shared by its verification modes)."""
    return exporter.verify_states[("only", "public.chunks")].spec_cache


def verdict(exporter: Exporter, key: tuple[str, str, str]) -> VerificationResult:
    """Run one verification mode; its result, which must have succeeded."""
    result = exporter.runners[key].run()
    assert result.success, result.error
    assert isinstance(result.payload, VerificationResult)
    return result.payload


def wrong_under(conn: psycopg.Connection[Any], modulus: int) -> int:
    """Rows whose key differs from abs(hashtext(collection_id) % MODULUS), counted directly."""
    row = conn.execute(
        "SELECT count(*) FROM chunks WHERE partition_key <> abs(hashtext(collection_id::text) %% %s)", (modulus,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_runs_read_the_catalog_once_while_it_stays_the_same(watched: Exporter) -> None:
    """Every mode of the table shares one read; later runs only compare the fingerprint."""
    for _ in range(3):
        assert verdict(watched, FULL).mismatched == 0
        verdict(watched, INCREMENTAL)
    assert cache(watched).reads == 1


CHANGES: list[tuple[str, str]] = [
    ("the trigger function replaced", LEGACY_TRIGGER_FUNCTION.format(schema="public", modulus=4)),
    ("a CHECK added", "ALTER TABLE chunks ADD CONSTRAINT some_check CHECK (length(content) < 100000)"),
    (
        "a helper function in the schema",
        "CREATE FUNCTION key_of(x text) RETURNS int LANGUAGE sql AS 'SELECT abs(hashtext(x) % 5)'",
    ),
    ("a column added", "ALTER TABLE chunks ADD COLUMN extra text"),
    ("an expression index", "CREATE INDEX chunks_key_expr ON chunks ((abs(hashtext(collection_id::text) % 5)))"),
    (
        "a trigger on a partition",
        "CREATE TRIGGER other BEFORE INSERT ON chunks_part_01 FOR EACH ROW EXECUTE FUNCTION compute_partition_key()",
    ),
    ("a column renamed", "ALTER TABLE chunks RENAME COLUMN extra TO spare"),
]


@pytest.mark.parametrize("change", CHANGES, ids=[name for name, _ in CHANGES])
def test_a_catalog_change_behind_the_formula_is_read_again(
    watched: Exporter, conn: psycopg.Connection[Any], change: tuple[str, str]
) -> None:
    """Each change is read by the next run (and only that one); what it reads is what the run uses."""
    verdict(watched, FULL)
    for name, statement in CHANGES:
        if name == change[0]:
            break
        conn.execute(statement)  # the changes before this one, so that each applies to the table as it would be
    verdict(watched, FULL)
    reads = cache(watched).reads
    conn.execute(change[1])
    verdict(watched, FULL)
    assert cache(watched).reads == reads + 1, change[0]
    verdict(watched, INCREMENTAL)
    assert cache(watched).reads == reads + 1


def test_a_replaced_trigger_formula_is_the_one_verified(watched: Exporter, conn: psycopg.Connection[Any]) -> None:
    """The cached % 5 spec is not used once the trigger function says % 4: the full pass counts against % 4."""
    assert verdict(watched, FULL).mismatched == 0
    conn.execute(LEGACY_TRIGGER_FUNCTION.format(schema="public", modulus=4))
    expected = wrong_under(conn, 4)
    assert expected > 0
    assert verdict(watched, FULL).mismatched == expected


def test_a_dropped_table_fails_the_run_and_a_new_one_is_read(watched: Exporter, conn: psycopg.Connection[Any]) -> None:
    """The cache never answers for a table that is gone; the table made again under the name is read afresh."""
    verdict(watched, FULL)
    conn.execute("DROP TABLE chunks")
    result = watched.runners[FULL].run()
    assert not result.success and result.error is not None and "does not exist" in result.error
    create_list_table(conn, modulus=3, trigger="partitions")
    insert_rows(conn, 30, modulus=3)
    reads = cache(watched).reads
    assert verdict(watched, FULL).mismatched == 0  # keyed % 3 now, as the new trigger says
    assert cache(watched).reads == reads + 1


def test_another_spec_on_the_same_table_is_another_read(conn: psycopg.Connection[Any]) -> None:
    """A reload can change the configured spec while the table's state stays: the spec is part of the key."""
    create_list_table(conn, modulus=5, trigger="partitions")
    spec_cache = SpecCache()
    first = KeySpec(modulus=5, auto=True)
    with conn.transaction():
        assert spec_cache.resolve(conn, first).spec.modulus == 5
        assert spec_cache.resolve(conn, first).spec.modulus == 5
        assert spec_cache.reads == 1
        other = replace(first, key_column="content", auto=False)
        resolved = spec_cache.resolve(conn, other)
        assert spec_cache.reads == 2 and resolved.spec == other and resolved.key_column_exists
        with pytest.raises(TableNotFoundError):
            spec_cache.resolve(conn, replace(first, table="absent"))
        assert spec_cache.reads == 3

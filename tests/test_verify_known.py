"""Full verification remembers each single-value partition's source values and reads them with one aggregate."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import psycopg
import pytest

from exporter.hashtext import partition_for
from exporter.keyspec import KeySpec
from exporter.verify import VerificationResult, Verifier
from exporter.verify_cache import PlanCache
from exporter.verify_known import MAX_VALUES, KnownBad, KnownLeaf, KnownValues, array_literal
from tests.schema import create_list_table, insert_rows, no_autovacuum, scalar

pytestmark = pytest.mark.versioned("verification")

PK = ("id", "collection_id", "partition_key")
MOVED = "00000000-0000-4000-8000-00000000abcd"
SPEC = KeySpec(modulus=10)


def _table(conn: psycopg.Connection[Any], default: bool = False, collections: int = 400) -> None:
    """10 single-value partitions without an index on collection_id, 2 rows moved to a stale collection."""
    create_list_table(conn, modulus=10, trigger=None, default_partition=default)
    no_autovacuum(conn)
    insert_rows(conn, 20_000, modulus=10, collections=collections)
    conn.execute(
        "UPDATE chunks SET collection_id = %s WHERE id IN"
        " (SELECT id FROM chunks WHERE partition_key <> %s ORDER BY id LIMIT 2)",
        (MOVED, partition_for(MOVED, 10)),
    )


def _seen(result: VerificationResult) -> tuple[Any, ...]:
    """Exact counts and bad pairs of a run."""
    pairs = sorted((b.kind, b.relation, b.stored_key, b.source, b.expected_key, b.rows) for b in result.bad_pairs)
    return result.rows_checked, result.mismatched, result.null_keys, result.expression_errors, tuple(pairs)


def _paths(result: VerificationResult) -> dict[str, str]:
    """Each leaf's path."""
    return {p.plan.relation: p.plan.path for p in result.partitions}


def _run(conn: psycopg.Connection[Any], cache: PlanCache, spec: KeySpec = SPEC) -> VerificationResult:
    """One full run through CACHE, checked against a run without a cache (nothing remembered)."""
    result = Verifier(conn, spec, primary_key=PK, plan_cache=cache).run("full")
    assert _seen(result) == _seen(Verifier(conn, spec, primary_key=PK).run("full"))
    return result


def _remembers(conn: psycopg.Connection[Any]) -> bool:
    """Known values are used from PostgreSQL 14 (a hashed `= ANY` over a constant array)."""
    return conn.info.server_version >= 140000


def test_the_second_run_counts_each_partition_with_one_aggregate(conn: psycopg.Connection[Any]) -> None:
    _table(conn, default=True)
    cache = PlanCache()
    first = _run(conn, cache)
    assert first.mismatched == 2 and set(_paths(first).values()) == {"group-by"}
    second = _run(conn, cache)
    expected = "known-values" if _remembers(conn) else "group-by"
    paths = _paths(second)
    assert paths.pop("public.chunks_default") == "group-by"  # keys vary per row there
    assert set(paths.values()) == {expected}
    if not _remembers(conn):
        return
    part = next(p for p in second.partitions if p.plan.relation == "public.chunks_part_00")
    assert part.rows_exact and part.rows == scalar(conn, "SELECT count(*) FROM ONLY chunks_part_00")
    assert "earlier pass found good" in part.plan.reason and "no btree index" in part.plan.reason
    assert part.to_dict()["path"] == "known-values"
    # New rows: a value good in one partition, written with a stale key into another; a new value (NULL sources
    # are in the property test: collection_id is NOT NULL here).
    stale = (partition_for(MOVED, 10) + 5) % 10
    conn.execute(
        "INSERT INTO chunks (collection_id, partition_key) VALUES (md5('1')::uuid, %s), (md5('new')::uuid, 0)",
        ((partition_for(scalar(conn, "SELECT md5('1')::uuid::text"), 10) + 1) % 10,),
    )
    conn.execute("UPDATE chunks SET partition_key = %s WHERE id = (SELECT max(id) FROM chunks_part_01)", (stale,))
    third = _run(conn, cache)
    assert third.mismatched > second.mismatched and third.rows_checked == second.rows_checked + 2
    fourth = _run(conn, cache)
    assert _seen(fourth) == _seen(third)


def test_the_known_values_statement_is_one_sequential_scan_and_one_plain_aggregate_per_partition(
    conn: psycopg.Connection[Any],
) -> None:
    _table(conn)
    cache = PlanCache()
    _run(conn, cache)
    plan = Verifier(conn, SPEC, plan_cache=cache).explain_full()
    if not _remembers(conn):
        assert "HashAggregate" in plan  # the GROUP BY pass stays before PostgreSQL 14
        return
    lines = plan.splitlines()
    assert sum("Seq Scan on chunks_part_" in line for line in lines) == 10
    assert any("Aggregate" in line for line in lines)
    # No grouping: no hash table of groups, no sort, no subplan per row.
    assert not [line for line in lines if "HashAggregate" in line or "GroupAggregate" in line or "Sort" in line]
    assert not [line for line in lines if "SubPlan" in line]


def test_remembered_values_are_dropped_when_they_could_lie(conn: psycopg.Connection[Any]) -> None:
    _table(conn)
    cache = PlanCache()
    _run(conn, cache)
    if not _remembers(conn):
        assert all(entry.known is None for entry in cache.entries.values())
        return
    assert set(_paths(_run(conn, cache)).values()) == {"known-values"}
    (entry,) = cache.entries.values()
    assert entry.known is not None
    # Another server run (a restart, or another server at the same address): nothing remembered is used.
    entry.known = replace(entry.known, server="2000-01-01 00:00:00+00")
    assert set(_paths(_run(conn, cache)).values()) == {"group-by"}
    assert set(_paths(_run(conn, cache)).values()) == {"known-values"}  # learned again
    # A leaf whose remembered bound is not its bound now is grouped again.
    assert entry.known is not None
    leaves = entry.known.unpack()
    oid = scalar(conn, "SELECT 'chunks_part_03'::regclass::oid")
    leaves[oid] = replace(leaves[oid], bound="FOR VALUES IN (99)")
    entry.known = KnownValues.pack(entry.known.server, entry.known.column_type, leaves)
    paths = _paths(_run(conn, cache))
    assert paths.pop("public.chunks_part_03") == "group-by" and set(paths.values()) == {"known-values"}
    # Re-attached with another bound: every row of the partition is now stale, found by a cold pass.
    conn.execute("ALTER TABLE chunks DETACH PARTITION chunks_part_03")
    conn.execute("UPDATE chunks_part_03 SET partition_key = 11")
    conn.execute("ALTER TABLE chunks ATTACH PARTITION chunks_part_03 FOR VALUES IN (11)")
    moved = scalar(conn, "SELECT count(*) FROM chunks_part_03")
    after = _run(conn, cache)
    assert _paths(after)["public.chunks_part_03"] == "group-by" and after.mismatched >= moved
    # Another formula (after a migration) is another cache entry: nothing of the safe formula's values is used.
    legacy = KeySpec(modulus=10, formula="legacy")
    assert set(_paths(_run(conn, cache, legacy)).values()) == {"group-by"}


def test_a_partition_with_more_values_than_the_cap_is_not_remembered(conn: psycopg.Connection[Any]) -> None:
    # 2,400 collections over 10 partitions: about 240 each; one partition gets MAX_VALUES more.
    _table(conn, collections=2_400)
    conn.execute(
        "INSERT INTO chunks (collection_id, partition_key, content) SELECT md5('cap' || g)::uuid, 7, 'x'"
        " FROM generate_series(1, %s) g",
        (MAX_VALUES,),
    )
    cache = PlanCache()
    _run(conn, cache)
    paths = _paths(_run(conn, cache))
    if not _remembers(conn):
        assert set(paths.values()) == {"group-by"}
        return
    assert paths.pop("public.chunks_part_07") == "group-by"
    assert set(paths.values()) == {"known-values"}


def test_known_leaves_pack_their_values_and_quote_them_for_an_array() -> None:
    leaf = KnownLeaf.make("FOR VALUES IN (1)", ["b", "a", 'q"uo\\te,{x}', "a"], [])
    assert leaf is not None and leaf.count == 3
    assert leaf.values == ("a", "b", 'q"uo\\te,{x}')
    assert array_literal(leaf.values) == '{"a","b","q\\"uo\\\\te,{x}"}'
    assert KnownLeaf.make("FOR VALUES IN (1)", map(str, range(MAX_VALUES + 1)), []) is None
    empty = KnownLeaf.make("FOR VALUES IN (2)", [], [])
    blank = KnownLeaf.make("FOR VALUES IN (3)", ["", "\1"], [KnownBad("x", 4, False)])
    assert empty is not None and blank is not None
    # Packed and unpacked, an empty leaf, the empty text and a control character survive.
    leaves = {7: leaf, 8: empty, 9: blank}
    assert KnownValues.pack("run", "text", leaves).unpack() == leaves
    assert KnownValues.pack("run", "text", {8: empty}).unpack() == {8: empty}


def test_an_array_literal_round_trips_through_the_server(conn: psycopg.Connection[Any]) -> None:
    values = ['q"uo\\te,{x}', "NULL", " spaced ", "", "ü"]
    assert scalar(conn, "SELECT CAST(%s AS text[])", (array_literal(values),)) == values


def test_a_partition_with_an_index_on_the_source_keeps_its_index_only_group_by(conn: psycopg.Connection[Any]) -> None:
    # 40 collections in 2,000 rows per partition (2%): too many for the loose scan, so GROUP BY through the index.
    _table(conn)
    conn.execute("CREATE INDEX ON chunks (collection_id)")
    conn.execute("ANALYZE chunks")
    cache = PlanCache()
    first = _run(conn, cache)
    assert {(p.plan.path, p.plan.index is not None) for p in first.partitions} == {("group-by", True)}
    second = _run(conn, cache)
    assert set(_paths(second).values()) == {"group-by"}

"""Full verification keeps its catalog reads and statements between runs, and drops them when the schema changes."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from exporter.checks.verification import TableVerificationState, VerificationCheck
from exporter.config import TableConfig
from exporter.hashtext import partition_for
from exporter.keyspec import KeySpec
from exporter.verify import VerificationResult, Verifier
from exporter.verify_cache import PackedCatalog, PlanCache, kept_objects
from exporter.verify_plan import plan_catalog, read_catalog
from tests.schema import create_list_table, insert_rows, no_autovacuum, scalar, until_statistics

pytestmark = pytest.mark.versioned("verification")

PK = ("id", "collection_id", "partition_key")
MOVED = "00000000-0000-4000-8000-00000000abcd"


def _move(conn: psycopg.Connection[Any], rows: int) -> None:
    """Move rows of other partitions to the MOVED collection without fixing their key (UPDATE drift)."""
    conn.execute(
        "UPDATE chunks SET collection_id = %s WHERE id IN"
        " (SELECT id FROM chunks WHERE partition_key <> %s AND collection_id <> %s ORDER BY id LIMIT %s)",
        (MOVED, partition_for(MOVED, 10), MOVED, rows),
    )


def _table(conn: psycopg.Connection[Any]) -> None:
    """10 single-value partitions and a DEFAULT one, an index on collection_id, 2 stale keys, no statistics yet."""
    create_list_table(conn, modulus=10, trigger=None, default_partition=True)
    conn.execute("CREATE INDEX chunks_collection ON chunks (collection_id)")
    no_autovacuum(conn)
    insert_rows(conn, 20_000, modulus=10, collections=400)
    _move(conn, 2)
    conn.execute("VACUUM chunks")  # no pg_stats: no distinct-value estimate, so the loose scan applies


def _analyze_counts(conn: psycopg.Connection[Any]) -> dict[int, int]:
    """Each partition's ANALYZE counter, as the fingerprint reads it."""
    rows = conn.execute(
        "SELECT inhrelid::int, pg_stat_get_analyze_count(inhrelid) FROM pg_inherits"
        " WHERE inhparent = 'chunks'::regclass"
    ).fetchall()
    return {int(oid): int(count) for oid, count in rows}


def _seen(result: VerificationResult) -> tuple[Any, ...]:
    """What a run found: exact bad counts, the bad pairs, and the path of every leaf.

    A cached run reads a group-by leaf by the values an earlier run remembered ("known-values"): the same decision.
    """
    pairs = sorted((b.kind, b.relation, b.stored_key, b.source, b.expected_key, b.rows) for b in result.bad_pairs)
    paths = sorted((p.plan.relation, p.plan.path.replace("known-values", "group-by")) for p in result.partitions)
    return result.mismatched, result.null_keys, result.expression_errors, tuple(pairs), tuple(paths)


def _cached_equals_fresh(conn: psycopg.Connection[Any], cache: PlanCache, spec: KeySpec) -> VerificationResult:
    """A run through the cache finds exactly what a run that reads the whole catalog finds."""
    cached = Verifier(conn, spec, primary_key=PK, plan_cache=cache).run("full")
    fresh = Verifier(conn, spec, primary_key=PK).run("full")
    assert _seen(cached) == _seen(fresh)
    return cached


def test_a_second_run_reuses_the_plan_and_still_reads_fresh_rows(conn: psycopg.Connection[Any]) -> None:
    _table(conn)
    cache = PlanCache()
    spec = KeySpec(modulus=10)
    first = _cached_equals_fresh(conn, cache, spec)
    assert (cache.misses, cache.hits) == (1, 0)
    assert first.mismatched == 2
    assert {p.plan.path for p in first.partitions if p.plan.list_value is not None} == {"loose-index-scan"}
    # No DDL, only data: the cached statements run again and see the new stale rows and the new DEFAULT row.
    _move(conn, 3)
    conn.execute("INSERT INTO chunks (collection_id, partition_key) VALUES (md5('x')::uuid, 77)")
    second = _cached_equals_fresh(conn, cache, spec)
    assert (cache.misses, cache.hits) == (1, 1)
    assert second.mismatched == 6
    assert ("public.chunks_default", 77) in {(b.relation, b.stored_key) for b in second.bad_pairs}


def test_schema_changes_between_runs_invalidate_the_cache(conn: psycopg.Connection[Any]) -> None:
    """A new partition, a dropped index, fresh statistics and another formula each re-read the catalog."""
    _table(conn)
    cache = PlanCache()
    spec = KeySpec(modulus=10)
    _cached_equals_fresh(conn, cache, spec)
    misses = cache.misses

    # A partition added (its index comes from the table's): its rows, all with a key no formula gives, are seen.
    conn.execute("CREATE TABLE chunks_part_10 PARTITION OF chunks FOR VALUES IN (10)")
    conn.execute("ALTER TABLE chunks_part_10 SET (autovacuum_enabled = false)")
    conn.execute(
        "INSERT INTO chunks (collection_id, partition_key) SELECT md5(g::text)::uuid, 10 FROM generate_series(1, 3) g"
    )
    conn.execute("VACUUM chunks_part_10")
    added = _cached_equals_fresh(conn, cache, spec)
    assert cache.misses == misses + 1
    misses = cache.misses
    part = next(p for p in added.partitions if p.plan.relation == "public.chunks_part_10")
    assert part.plan.path == "loose-index-scan" and part.plan.list_value == 10
    assert added.mismatched == 2 + 3

    # ANALYZE: about 40 collections in 2,000 rows per partition is 2% distinct, far above the loose scan's 0.1%
    # limit even when n_live_tup counts the load twice (ANALYZE can beat the loader's statistics flush).
    # Up to PostgreSQL 14 the ANALYZE counters reach the statistics collector a moment later: wait for them.
    before = _analyze_counts(conn)
    conn.execute("ANALYZE chunks")
    until_statistics(lambda: _analyze_counts(conn), lambda now: all(now[o] > n for o, n in before.items()), seconds=60)
    analyzed = _cached_equals_fresh(conn, cache, spec)
    assert cache.misses == misses + 1
    misses = cache.misses
    assert {p.plan.path for p in analyzed.partitions if p.plan.relation.startswith("public.chunks_part_0")} == {
        "group-by"
    }
    assert all(p.rows_exact for p in analyzed.partitions) and analyzed.mismatched == 5

    # Back to no statistics on the partitions is not something a DBA does; dropping the index is.
    conn.execute("DROP INDEX chunks_collection")
    dropped = _cached_equals_fresh(conn, cache, spec)
    assert cache.misses == misses + 1
    misses = cache.misses
    assert all("no btree index" in p.plan.reason for p in dropped.partitions if p.plan.list_value is not None)
    assert dropped.mismatched == 5

    # Another formula (as after a trigger change read by key_expression: auto) is another entry, never a stale hit.
    legacy = KeySpec(modulus=10, formula="legacy")
    _cached_equals_fresh(conn, cache, legacy)
    assert cache.misses == misses + 1
    hits = cache.hits
    _cached_equals_fresh(conn, cache, spec)
    assert cache.hits == hits + 1  # the safe formula's entry still holds: nothing changed for it


def test_a_plan_cached_for_a_role_follows_its_grants(conn: psycopg.Connection[Any]) -> None:
    """SELECT granted on a partition changes how it is read (by name); the fingerprint sees the grant."""
    _table(conn)
    role = f"partkey_cache_{conn.info.backend_pid}"
    conn.execute(f"CREATE ROLE {role}")
    conn.execute(f"GRANT SELECT ON chunks TO {role}")
    cache = PlanCache()
    spec = KeySpec(modulus=10)
    try:
        conn.execute(f"SET ROLE {role}")
        before = Verifier(conn, spec, plan_cache=cache).run("full")
        conn.execute("RESET ROLE")
        conn.execute(f"GRANT SELECT ON chunks_default TO {role}")
        conn.execute(f"SET ROLE {role}")
        after = Verifier(conn, spec, plan_cache=cache).run("full")
    finally:
        conn.execute("RESET ROLE")
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")
    assert cache.misses == 2
    readable = {p.plan.relation: p.plan.readable for p in after.partitions}
    assert readable["public.chunks_default"] and not readable["public.chunks_part_00"]
    assert not any(p.plan.readable for p in before.partitions)
    assert before.mismatched == after.mismatched == 2


def test_the_full_check_keeps_its_cache_in_the_table_state(conn: psycopg.Connection[Any]) -> None:
    """The exporter's full verification check reuses the plan between its runs."""
    _table(conn)
    state = TableVerificationState()
    check = VerificationCheck(TableConfig.model_validate({"modulus": 10, "key_expression": "safe"}), "full", state)
    outcomes = [check.run(conn) for _ in range(2)]
    assert (state.plan_cache.misses, state.plan_cache.hits) == (1, 1)
    assert [o.payload.mismatched for o in outcomes] == [2, 2]


def test_the_fingerprint_ignores_vacuum_and_reads(conn: psycopg.Connection[Any]) -> None:
    """VACUUM writes pg_class in place: it must not throw the plan away (else every run would miss)."""
    _table(conn)
    cache = PlanCache()
    spec = KeySpec(modulus=10)
    Verifier(conn, spec, plan_cache=cache).run("full")
    conn.execute("VACUUM chunks")
    scalar(conn, "SELECT count(*) FROM chunks")
    key = partition_for("00000000-0000-4000-8000-000000000001", 10)
    conn.execute(
        sql.SQL("INSERT INTO chunks (collection_id, partition_key) VALUES ({}, {})").format(
            sql.Literal("00000000-0000-4000-8000-000000000001"), sql.Literal(key)
        )
    )
    result = Verifier(conn, spec, plan_cache=cache).run("full")
    assert (cache.misses, cache.hits) == (1, 1)
    assert result.mismatched == 2


def test_the_cache_keeps_a_catalog_in_a_fixed_number_of_objects_that_plans_as_read(
    conn: psycopg.Connection[Any],
) -> None:
    """What the cache keeps of a catalog does not grow with the partitions, and plans exactly as the catalog read."""
    _table(conn)
    # Leaves planning tells apart: one with an index that cannot serve the key, one with statistics, one without.
    conn.execute("DROP INDEX chunks_collection")
    conn.execute("CREATE INDEX chunks_part_01_content ON chunks_part_01 (content)")
    for key in range(2, 10):
        conn.execute(f"CREATE INDEX chunks_part_{key:02d}_pair ON chunks_part_{key:02d} (collection_id, id)")
    conn.execute("ANALYZE chunks_part_03, chunks_part_04")
    conn.execute("CREATE SCHEMA wide")
    create_list_table(conn, schema="wide", modulus=40, trigger=None)
    counts = []
    for spec in (KeySpec(modulus=10), KeySpec(modulus=40, schema="wide")):
        catalog, rows = read_catalog(conn, spec)
        packed = PackedCatalog.pack(catalog, spec.source_columns)
        unpacked = packed.unpack()
        assert unpacked.leaves == catalog.leaves and unpacked.nullable == catalog.nullable
        assert unpacked.stats == catalog.stats
        # Row estimates move the loose-scan decision: the plans must agree whatever they are.
        for estimates in (rows, dict.fromkeys(rows, 0), {oid: 10 * n + 5_000_000 for oid, n in rows.items()}):
            assert plan_catalog(unpacked, estimates, spec) == plan_catalog(catalog, estimates, spec)
        # As read, a catalog holds several objects per leaf; packed, a few per table whatever its partitions.
        assert kept_objects(catalog) > 3 * len(catalog.leaves)
        counts.append(kept_objects(packed))
        if spec.schema == "public":
            paths = {plan.relation: plan.path for _, plan in plan_catalog(unpacked, rows, spec)}
            assert paths["public.chunks_part_01"] == "group-by"  # its only index does not lead with the source
            assert paths["public.chunks_part_05"] == "loose-index-scan"
            assert len(paths) == 11
    assert max(counts) < 20, counts


def test_statements_read_back_from_the_cache_are_the_ones_built(conn: psycopg.Connection[Any]) -> None:
    """The cache keeps the statements compressed; what a hit hands back is what the miss built, byte for byte."""
    _table(conn)
    cache = PlanCache()
    spec = KeySpec(modulus=10)

    def texts() -> list[str]:
        _, passes = Verifier(conn, spec, primary_key=PK, plan_cache=cache).full_passes()
        return [sql.SQL(" UNION ALL ").join(groups).as_string(conn) for groups in passes]

    built = texts()
    assert (cache.misses, cache.hits) == (1, 0)
    (entry,) = cache.entries.values()
    assert entry.statements is not None
    evaluated = [statement for _, statement in entry.statements[1]]
    assert texts() == built and (cache.misses, cache.hits) == (1, 1)
    assert [statement for _, statement in entry.statements[1]] == evaluated
    assert all(b"SELECT" in statement for statement in evaluated) and built
    # The whole entry is a few dozen objects, not several per partition.
    assert kept_objects(entry) < 60

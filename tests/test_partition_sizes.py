"""Bytes, dead rows and vacuum/analyze times per partition, from the catalog, and their series on /metrics."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from exporter.collector import PartkeyCollector
from exporter.keyspec import KeySpec
from exporter.partition_stats import LEAVES_SQL, estimated_distribution, summarize
from exporter.partition_stats import PartitionRows as P
from exporter.snapshot import CheckResult, SnapshotStore
from tests.schema import create_list_table, insert_rows, no_autovacuum, scalar, until_counted, until_statistics

pytestmark = pytest.mark.versioned("partition sizes")
SPEC = KeySpec(modulus=5)


def _load(conn: psycopg.Connection[Any]) -> None:
    """Five partitions and a DEFAULT one; partition 0 gets big values that go to TOAST."""
    create_list_table(conn, modulus=5, trigger=None, default_partition=True)
    # Autovacuum on a quiet server (seen on PG 11) analyzed five partitions while _load waited for the counts.
    no_autovacuum(conn)
    insert_rows(conn, 4000, modulus=5, collections=7)
    # Random text does not compress, so 8 kB values are stored out of line in the TOAST table.
    conn.execute(
        "INSERT INTO chunks (collection_id, partition_key, content) "
        "SELECT md5(g::text)::uuid, 0, (SELECT string_agg(md5(random()::text || g || i), '') "
        "FROM generate_series(1, 256) i) FROM generate_series(1, 40) g"
    )
    # A backend sends its counts to the statistics a moment later; an ANALYZE before that would be followed by
    # 4,040 "changes since the ANALYZE" that happened before it. Wait for them, as a production table would.
    until_counted(conn, 4040)


def test_sizes_are_the_relation_sizes_once_measured(conn: psycopg.Connection[Any]) -> None:
    _load(conn)
    unmeasured = estimated_distribution(conn, SPEC)
    # Never vacuumed or analyzed: the catalog's page counts are placeholders, so the sizes are unknown.
    assert all(p.bytes is None for p in unmeasured.partitions)
    assert unmeasured.heap_bytes is None and unmeasured.bytes_skew_ratio is None
    conn.execute("VACUUM chunks")
    conn.execute("ANALYZE chunks")
    # An empty partition's page count is 0 either way; its ANALYZE time, which reaches the statistics views
    # a moment later before PG 15, is what tells "measured, empty" from "never measured".
    found = until_statistics(
        lambda: estimated_distribution(conn, SPEC), lambda d: all(p.last_analyze is not None for p in d.partitions)
    )
    for p in found.partitions:
        oid = scalar(conn, "SELECT oid FROM pg_class WHERE relname = %s", (p.name,))
        assert p.heap_bytes == scalar(conn, "SELECT pg_relation_size(%s::oid, 'main')", (oid,)), p.name
        assert p.index_bytes == scalar(conn, "SELECT pg_indexes_size(%s::oid)", (oid,)), p.name
        toast_heap, toast_all = conn.execute(
            "SELECT coalesce(pg_relation_size(nullif(reltoastrelid, 0), 'main'), 0), "
            "coalesce(pg_relation_size(nullif(reltoastrelid, 0), 'main') "
            "+ pg_indexes_size(nullif(reltoastrelid, 0)), 0) FROM pg_class WHERE oid = %s",
            (oid,),
        ).fetchone() or (0, 0)
        # The TOAST index's page count is as of its last index vacuum, which VACUUM skips when nothing died.
        assert p.toast_bytes is not None and toast_heap <= p.toast_bytes <= toast_all, p.name
    by_name = {p.name: p for p in found.partitions}
    assert (by_name["chunks_part_00"].toast_bytes or 0) > 8192 * 10  # the big values are there
    assert (by_name["chunks_part_01"].toast_bytes or 0) < 8192 * 2
    leaves = list(found.partitions)
    assert found.heap_bytes == sum(p.heap_bytes or 0 for p in leaves)
    assert found.index_bytes == sum(p.index_bytes or 0 for p in leaves)
    assert found.toast_bytes == sum(p.toast_bytes or 0 for p in leaves)
    # The fullest partition by bytes is the one with the TOASTed values, and the skew says so.
    regular = [p.bytes or 0 for p in leaves if not p.is_default]
    assert found.bytes_max == by_name["chunks_part_00"].bytes == max(regular)
    assert found.bytes_skew_ratio == pytest.approx(max(regular) / (sum(regular) / 5))
    assert found.bytes_skew_ratio is not None and found.bytes_skew_ratio > 1.5


def test_sizes_never_wait_on_a_lock(conn: psycopg.Connection[Any], dsn: str) -> None:
    _load(conn)
    conn.execute("ANALYZE chunks")
    with psycopg.connect(dsn) as locker, psycopg.connect(dsn) as reader:
        locker.execute("LOCK TABLE chunks IN ACCESS EXCLUSIVE MODE")
        # pg_relation_size() would queue behind the lock and fail at this timeout; page counts do not.
        reader.execute("SET lock_timeout = '2s'")
        found = estimated_distribution(reader, SPEC)
        locker.rollback()
    assert all(p.heap_bytes is not None and p.heap_bytes > 0 for p in found.partitions if p.rows)


def test_dead_rows_vacuum_analyze_and_stale_statistics(conn: psycopg.Connection[Any]) -> None:
    _load(conn)
    never = estimated_distribution(conn, SPEC)
    assert never.stale == 6  # never analyzed: all five partitions and the default one
    assert all(p.last_analyze is None and p.last_vacuum is None for p in never.partitions)
    before = time.time()
    conn.execute("ANALYZE chunks")
    fresh = until_statistics(lambda: estimated_distribution(conn, SPEC), lambda d: d.stale == 0)
    assert fresh.stale == 0
    assert all(p.last_analyze is not None and p.last_analyze >= before - 5 for p in fresh.partitions)
    rows_01 = scalar(conn, "SELECT count(*) FROM chunks_part_01")
    conn.execute("DELETE FROM chunks_part_01")
    # Every row of partition 1 changed since its ANALYZE: more than autovacuum's 50 + 10%, so it is stale.
    changed = until_statistics(
        lambda: estimated_distribution(conn, SPEC),
        lambda d: any(p.name == "chunks_part_01" and p.dead_rows == rows_01 for p in d.partitions),
    )
    part_01 = next(p for p in changed.partitions if p.name == "chunks_part_01")
    assert part_01.dead_rows == rows_01 and part_01.stale and part_01.last_vacuum is None
    assert changed.stale == 1
    conn.execute("VACUUM chunks_part_01")
    vacuumed = until_statistics(
        lambda: estimated_distribution(conn, SPEC),
        lambda d: any(p.name == "chunks_part_01" and p.last_vacuum is not None for p in d.partitions),
    )
    part_01 = next(p for p in vacuumed.partitions if p.name == "chunks_part_01")
    assert part_01.dead_rows == 0 and part_01.last_vacuum is not None


def test_bytes_skew_figures_and_unknown_sizes() -> None:
    parts = [
        P("a", 10, False, heap_bytes=8192 * 30, index_bytes=8192 * 10, toast_bytes=0),
        P("b", 10, False, heap_bytes=8192 * 10, index_bytes=0, toast_bytes=0),
        P("c", 10, False, heap_bytes=8192 * 10, index_bytes=0, toast_bytes=0),
        P("default", 0, True, heap_bytes=0, index_bytes=8192, toast_bytes=0),
    ]
    spread = summarize("estimate", True, parts)
    assert (spread.heap_bytes, spread.index_bytes, spread.toast_bytes) == (8192 * 50, 8192 * 11, 0)
    assert spread.bytes_avg == 8192 * 20 and spread.bytes_max == 8192 * 40
    assert spread.bytes_skew_ratio == 2.0
    assert spread.bytes_cv == pytest.approx((((20**2) + 2 * (10**2)) / 3) ** 0.5 / 20)
    missing = summarize("estimate", True, [*parts, P("d", None, False)])
    # One partition of unknown size: the parent totals are unknown, the skew covers the ones that are known.
    assert missing.heap_bytes is None and missing.bytes_skew_ratio == 2.0


def _families(store: SnapshotStore) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of the collector's output, by metric name."""
    registry = CollectorRegistry()
    registry.register(PartkeyCollector(store, ["t1"]))
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def test_size_series_one_per_partition_and_kind(conn: psycopg.Connection[Any]) -> None:
    _load(conn)
    conn.execute("VACUUM chunks")
    conn.execute("ANALYZE chunks")
    found = until_statistics(lambda: estimated_distribution(conn, SPEC), lambda d: d.stale == 0)
    store = SnapshotStore()
    for check in ("distribution", "distribution_exact"):
        store.publish(CheckResult("t1", "public.chunks", check, True, 0.1, 1.0, 1.0, 15.0, payload=found))
    samples = _families(store)
    # Six leaves x three kinds, from the estimate check only, though the exact check carries sizes too.
    sizes = samples["partkey_partition_bytes"]
    assert len(sizes) == 18
    assert {s[0]["kind"] for s in sizes} == {"heap", "index", "toast"}
    assert {s[0]["partition"] for s in sizes} == {p.name for p in found.partitions}
    part_00 = {s[0]["kind"]: s[1] for s in sizes if s[0]["partition"] == "chunks_part_00"}
    by_name = {p.name: p for p in found.partitions}
    assert part_00["toast"] == by_name["chunks_part_00"].toast_bytes
    for name in (
        "partkey_partition_dead_rows",
        "partkey_partition_last_vacuum_timestamp_seconds",
        "partkey_partition_last_analyze_timestamp_seconds",
    ):
        assert len(samples[name]) == 6, name
    totals = {s[0]["kind"]: s[1] for s in samples["partkey_table_bytes"]}
    assert totals == {"heap": found.heap_bytes, "index": found.index_bytes, "toast": found.toast_bytes}
    assert samples["partkey_partition_bytes_skew_ratio"][0][1] == pytest.approx(found.bytes_skew_ratio)
    assert samples["partkey_partitions_stale_statistics"] == [({"target": "t1", "table": "public.chunks"}, 0.0)]


def _repeated_catalog_scans(plan: dict[str, Any]) -> list[str]:
    """Sequential scans of pg_class run more than once (once per leaf): what made the query grow with the catalog."""
    found = []
    if plan.get("Node Type") == "Seq Scan" and plan.get("Relation Name") == "pg_class" and plan["Actual Loops"] > 1:
        found.append(f"Seq Scan on pg_class, {plan['Actual Loops']} loops, filter {plan.get('Filter')}")
    for child in plan.get("Plans", []):
        found.extend(_repeated_catalog_scans(child))
    return found


def test_the_size_query_looks_each_leaf_up_by_index(conn: psycopg.Connection[Any]) -> None:
    # One `oid = reltoastrelid OR oid IN (...)` filter scanned all of pg_class per leaf: 350 ms every minute at
    # 1,000 partitions (bench-exporter, 2026-11-30). 120 partitions make pg_class large enough that a scan per leaf
    # can never be the planner's cheaper choice.
    create_list_table(conn, modulus=120, trigger=None)
    query = sql.SQL(LEAVES_SQL).format(table=sql.Literal("public.chunks"))
    row = conn.execute(sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) {}").format(query)).fetchone()
    assert row is not None
    plan = row[0][0]["Plan"]
    assert _repeated_catalog_scans(plan) == []
    distribution = estimated_distribution(conn, KeySpec(modulus=120))
    assert len(distribution.partitions) == 120

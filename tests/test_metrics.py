"""/metrics parsed with prometheus_client's parser, exact values asserted against the database."""

from __future__ import annotations

import re
import uuid
from typing import Any

import psycopg

from exporter.app import Exporter
from exporter.hashtext import partition_for
from tests.schema import create_list_table, insert_rows, scalar
from tests.support import config_for, http, metrics, names_with, serving, value

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
TABLE = """
modulus: 10
monotonic_column: id
checks:
  insert_probe: {enabled: true, samples: 4}
"""


def _stale(conn: psycopg.Connection[Any], ids: list[int], modulus: int = 10) -> None:
    """Give rows a collection id whose key differs, leaving the key as it was (UPDATE drift)."""
    for row_id in ids:
        stored = scalar(conn, "SELECT partition_key FROM chunks WHERE id = %s", (row_id,))
        candidates = (str(uuid.uuid5(uuid.NAMESPACE_OID, str(g))) for g in range(100))
        moved = next(u for u in candidates if partition_for(u, modulus) != stored)
        conn.execute("UPDATE chunks SET collection_id = %s WHERE id = %s", (moved, row_id))


def _prepare(conn: psycopg.Connection[Any]) -> None:
    create_list_table(conn, modulus=10, trigger="parent")
    insert_rows(conn, 2000, modulus=10, collections=40)
    _stale(conn, [3, 5, 8])
    conn.execute("ANALYZE chunks")


def test_metrics_values_match_the_database(conn: psycopg.Connection[Any], dsn: str) -> None:
    _prepare(conn)
    exporter = Exporter(config_for(dsn, TABLE))
    exporter.run_all_once()
    with serving(exporter) as server:
        samples = metrics(server.url)
    t = {"target": "t1", "table": "public.chunks"}
    assert value(samples, "partkey_up", target="t1") == 1
    assert value(samples, "partkey_mismatched_rows", **t, mode="full") == 3
    assert value(samples, "partkey_null_key_rows", **t, mode="full") == 0
    assert value(samples, "partkey_verification_rows_checked", **t, mode="full") == 2000
    assert value(samples, "partkey_rows_verified_total", **t, mode="full") == 2000
    assert value(samples, "partkey_key_implementation", **t, implementation="trigger") == 1
    assert value(samples, "partkey_key_implementation", **t, implementation="check") == 0
    assert value(samples, "partkey_key_implementation_optimal", **t) == 0
    assert value(samples, "partkey_key_formula_overflow", **t) == 1
    assert value(samples, "partkey_key_trigger_enabled", **t) == 1
    assert value(samples, "partkey_table_partitions", **t) == 10
    version_text = scalar(conn, "SHOW server_version").split()[0]
    major = conn.info.server_version // 10000
    assert value(samples, "partkey_postgres_version", target="t1", version=version_text) == major
    exact = dict(conn.execute("SELECT tableoid::regclass::text, count(*) FROM chunks GROUP BY 1").fetchall())
    for name, count in exact.items():
        assert value(samples, "partkey_partition_rows", **t, partition=name, source="exact") == count
        # After ANALYZE, reltuples is exact for tables this small: estimate and exact agree.
        assert value(samples, "partkey_partition_rows", **t, partition=name, source="estimate") == count
    assert value(samples, "partkey_table_rows", **t, source="estimate") == 2000
    counts = list(exact.values()) + [0] * (10 - len(exact))
    avg = sum(counts) / 10
    assert value(samples, "partkey_partition_skew_ratio", **t, source="exact") == max(counts) / avg
    assert value(samples, "partkey_partitions_empty", **t, source="exact") == counts.count(0)
    assert value(samples, "partkey_partitions_hot", **t, source="exact") == sum(1 for c in counts if c > 1.2 * avg)
    assert value(samples, "partkey_insert_probe_duration_seconds_count", **t) == 4
    assert value(samples, "partkey_insert_probe_failures_total", **t) == 0
    for check in (
        "implementation",
        "verification_full",
        "verification_sample",
        "verification_incremental",
        "distribution",
        "distribution_exact",
        "insert_probe",
    ):
        assert value(samples, "partkey_check_success", **t, check=check) == 1, check
        assert value(samples, "partkey_check_last_success_timestamp_seconds", **t, check=check) > 0
    assert value(samples, "partkey_check_interval_seconds", **t, check="verification_full") == 21600
    # No label ever carries a collection id: no label name or value mentions one, and no value holds a uuid.
    pairs = [pair for (_, labels) in samples for pair in labels]
    assert not [
        (label, text) for label, text in pairs if "collection" in label or "collection" in text or UUID.search(text)
    ]


def test_openmetrics_when_asked(conn: psycopg.Connection[Any], dsn: str) -> None:
    _prepare(conn)
    exporter = Exporter(config_for(dsn, TABLE))
    exporter.run_all_once()
    with serving(exporter) as server:
        status, headers, body = http(server.url + "/metrics", headers={"Accept": "application/openmetrics-text"})
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.decode().rstrip().endswith("# EOF")
    assert 'partkey_mismatched_rows{mode="full",table="public.chunks",target="t1"} 3.0' in body.decode()


def test_dropped_partition_disappears(conn: psycopg.Connection[Any], dsn: str) -> None:
    _prepare(conn)
    exporter = Exporter(config_for(dsn, TABLE))
    exporter.run_all_once()
    with serving(exporter) as server:
        before = names_with(metrics(server.url), "partkey_partition_rows")
        assert {"partition": "chunks_part_09", "source": "estimate", "target": "t1", "table": "public.chunks"} in before
        conn.execute("DROP TABLE chunks_part_09")
        exporter.runners[("t1", "public.chunks", "distribution")].run()
        exporter.runners[("t1", "public.chunks", "distribution_exact")].run()
        after = names_with(metrics(server.url), "partkey_partition_rows")
    assert not [labels for labels in after if labels["partition"] == "chunks_part_09"]
    assert len(after) == len(before) - 2


def test_incremental_counts_only_new_bad_rows(conn: psycopg.Connection[Any], dsn: str) -> None:
    _prepare(conn)
    exporter = Exporter(config_for(dsn, TABLE))
    runner = exporter.runners[("t1", "public.chunks", "verification_incremental")]
    first = runner.run()
    assert first.payload.rows_checked == 0 and first.payload.mismatched == 0
    conn.execute("ALTER TABLE chunks DISABLE TRIGGER set_partition_key")
    conn.execute(
        "INSERT INTO chunks (collection_id, partition_key) SELECT md5('n' || g)::uuid, "
        "(abs(hashtext(md5('n' || g)::uuid::text) % 10) + 1) % 10 FROM generate_series(1, 5) g"
    )
    insert_rows(conn, 30, modulus=10)
    second = runner.run()
    assert (second.payload.rows_checked, second.payload.mismatched) == (35, 5)
    with serving(exporter) as server:  # stops the exporter at the end
        third = runner.run()
        # Cumulative: of the 35 rows checked since the start, 5 were bad; none of the 30 good ones count as wrong.
        assert (third.payload.rows_checked, third.payload.mismatched, third.payload.correct) == (35, 5, 30)
        samples = metrics(server.url)
        t = {"target": "t1", "table": "public.chunks", "mode": "incremental"}
        assert value(samples, "partkey_verification_rows_checked", **t) == 35
        assert value(samples, "partkey_rows_verified_total", **t) == 35  # the counter counts each row once
        # While a full pass still finds bad rows, the incremental tally stays; after a repair it starts over.
        exporter.runners[("t1", "public.chunks", "verification_full")].run()
        assert runner.run().payload.mismatched == 5
        conn.execute(
            "UPDATE chunks SET partition_key = abs(hashtext(collection_id::text) % 10)"
            " WHERE partition_key <> abs(hashtext(collection_id::text) % 10)"
        )
        clean = exporter.runners[("t1", "public.chunks", "verification_full")].run()
        assert clean.payload.mismatched == 0
        after = runner.run().payload
        assert (after.rows_checked, after.mismatched) == (0, 0)

"""The insert probe measures real INSERTs and never leaves a row behind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from exporter.app import Exporter
from exporter.target import APPLICATION_NAME
from tests.schema import create_list_table, create_plain_table, insert_rows, scalar
from tests.support import config_for, metrics, serving, value

pytestmark = pytest.mark.versioned("insert probe")

PROBE_COMMAND = "`partkey-exporter` insert probe"
PROBE = "checks:\n  insert_probe: {enabled: true, samples: 5}"
T = {"target": "t1", "table": "public.chunks"}


def _probe(dsn: str, table_yaml: str) -> Exporter:
    exporter = Exporter(config_for(dsn, table_yaml))
    exporter.runners[("t1", "public.chunks", "insert_probe")].run()
    return exporter


@pytest.mark.parametrize("shape", ["list-trigger", "plain-generated", "plain-trigger"])
def test_probe_leaves_no_rows(
    conn: psycopg.Connection[Any], dsn: str, shape: str, does: Callable[[str, str], None]
) -> None:
    major = conn.info.server_version // 10000
    if shape == "plain-generated" and major < 12:
        with pytest.raises(psycopg.errors.SyntaxError, match=r'^syntax error at or near "\("'):
            create_plain_table(conn, key="generated")
        does(f"{PROBE_COMMAND}, plain table with generated key", "no such table here (no GENERATED before 12)")
        return
    if shape == "list-trigger":
        # PG 11/12 cannot put the trigger on a partitioned parent: one per partition, as semantik has there.
        create_list_table(conn, modulus=10, trigger="parent" if major >= 13 else "partitions")
        insert_rows(conn, 100, modulus=10)
        yaml = "modulus: 10\n" + PROBE
    else:
        create_plain_table(conn, key=shape.split("-")[1])
        insert_rows(conn, 100, supply_key=False)
        yaml = PROBE
    before = conn.execute("SELECT count(*), coalesce(sum(partition_key), 0) FROM chunks").fetchone()
    exporter = _probe(dsn, yaml)
    result = exporter.store.latest("t1", "public.chunks", "insert_probe")
    assert result is not None and result.success, result.error if result else None
    assert len(result.payload.samples) == 5 and all(s > 0 for s in result.payload.samples)
    with serving(exporter) as server:
        samples = metrics(server.url)
    assert value(samples, "partkey_insert_probe_duration_seconds_count", **T) == 5
    assert value(samples, "partkey_insert_probe_duration_seconds_bucket", **T, le="+Inf") == 5
    assert value(samples, "partkey_insert_probe_failures_total", **T) == 0
    after = conn.execute("SELECT count(*), coalesce(sum(partition_key), 0) FROM chunks").fetchone()
    assert after == before
    probe_id = "00000000-0000-0000-0000-000000000000"
    assert scalar(conn, "SELECT count(*) FROM chunks WHERE collection_id = %s", (probe_id,)) == 0
    lingering = scalar(
        conn,
        # This database's only: another xdist worker's exporter may be on the same server.
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND datname = current_database() "
        "AND state LIKE 'idle in transaction%%'",
        (APPLICATION_NAME,),
    )
    assert lingering == 0
    table = shape.replace("-", " table with ")
    does(f"{PROBE_COMMAND}, {table} key", "5 timed INSERTs rolled back, no row left")


def test_failed_probe_counts_a_failure_and_says_why(conn: psycopg.Connection[Any], dsn: str) -> None:
    create_plain_table(conn, key="trigger")
    conn.execute("ALTER TABLE chunks ADD COLUMN owner text NOT NULL DEFAULT 'x'")
    conn.execute("ALTER TABLE chunks ALTER COLUMN owner DROP DEFAULT")
    exporter = _probe(dsn, PROBE)
    result = exporter.store.latest("t1", "public.chunks", "insert_probe")
    assert result is not None and not result.success
    assert result.error is not None and 'null value in column "owner"' in result.error
    with serving(exporter) as server:
        samples = metrics(server.url)
    assert value(samples, "partkey_insert_probe_failures_total", **T) == 1
    assert value(samples, "partkey_insert_probe_duration_seconds_count", **T) == 0
    # extra_values fills such columns, and the row still does not stay.
    fixed = _probe(dsn, "checks:\n  insert_probe: {enabled: true, samples: 2, extra_values: {owner: probe}}")
    again = fixed.store.latest("t1", "public.chunks", "insert_probe")
    assert again is not None and again.success, again.error if again else None
    assert scalar(conn, "SELECT count(*) FROM chunks") == 0
    fixed.stop()

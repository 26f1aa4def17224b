"""Rows per partition: unknown before statistics exist, and estimates that agree with exact counts after ANALYZE."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from exporter.keyspec import KeySpec
from exporter.partition_stats import Distribution, estimated_distribution, exact_distribution, summarize
from exporter.partition_stats import PartitionRows as P
from tests.schema import create_list_table, insert_rows, until_statistics

pytestmark = pytest.mark.versioned("distribution")
SPEC = KeySpec(modulus=5)


def test_never_analyzed_partitions_are_unknown_not_empty(
    conn: psycopg.Connection[Any], does: Callable[[str, str], None]
) -> None:
    create_list_table(conn, modulus=5, trigger=None, default_partition=True)
    fresh = estimated_distribution(conn, SPEC)
    assert (fresh.unknown, fresh.total_rows, fresh.empty, fresh.active) == (6, None, 0, 0)
    assert fresh.skew_ratio is None and fresh.avg is None
    conn.execute("ANALYZE chunks")
    analyzed = until_statistics(lambda: estimated_distribution(conn, SPEC), lambda d: d.unknown == 0)
    assert (analyzed.unknown, analyzed.total_rows, analyzed.empty) == (0, 0, 5)
    does("`partkey-exporter` rows per partition, before the first ANALYZE", "unknown, never empty; empty once analyzed")


def test_estimate_matches_exact_after_analyze(conn: psycopg.Connection[Any]) -> None:
    create_list_table(conn, modulus=5, trigger=None, default_partition=True)
    insert_rows(conn, 3000, modulus=5, collections=7)
    conn.execute(
        "INSERT INTO chunks (collection_id, partition_key) SELECT md5(g::text)::uuid, 77 FROM generate_series(1, 9) g"
    )
    conn.execute("ANALYZE chunks")
    exact = exact_distribution(conn, SPEC)

    def counts_of(found: Distribution) -> list[tuple[str, int | None, bool]]:
        # Only the counts: dead rows and vacuum times may move between two reads while the stats flush.
        return [(p.name, p.rows, p.is_default) for p in found.partitions]

    estimate = until_statistics(lambda: estimated_distribution(conn, SPEC), lambda d: counts_of(d) == counts_of(exact))
    assert counts_of(estimate) == counts_of(exact)
    assert exact.total_rows == 3009 and exact.default_rows == 9
    rows = [p.rows for p in exact.partitions if not p.is_default]
    counts = [r for r in rows if r is not None]
    assert counts == rows  # an exact count knows every partition's rows
    assert exact.max == max(counts) and exact.min == min(counts)
    assert exact.skew_ratio == pytest.approx(max(counts) / (3000 / 5))
    assert (estimate.source, exact.source) == ("estimate", "exact")


def test_skew_figures() -> None:
    spread = summarize(
        "exact",
        True,
        [P("a", 100, False), P("b", 50, False), P("c", 0, False), P("d", 50, False), P("default", 3, True)],
    )
    assert (spread.total_rows, spread.default_rows, spread.partition_count) == (203, 3, 4)
    assert (spread.avg, spread.max, spread.min, spread.skew_ratio) == (50.0, 100, 0, 2.0)
    assert spread.cv == pytest.approx((1250**0.5) / 50)
    assert (spread.active, spread.empty, spread.hot, spread.cold) == (3, 1, 1, 1)

"""Rows per partition, from the statistics (cheap) or exact counts, and the skew figures derived from them."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql

from exporter.keyspec import KeySpec

Source = Literal["estimate", "exact"]
HOT_FACTOR, COLD_FACTOR = 1.2, 0.8  # semantik's own thresholds for hot and cold partitions


@dataclass(frozen=True)
class PartitionRows:
    """Rows in one leaf relation; None when the statistics cannot tell."""

    name: str
    rows: int | None
    is_default: bool


@dataclass(frozen=True)
class Distribution:
    """How rows spread over the partitions; figures cover the non-default partitions with known counts."""

    source: Source
    partitioned: bool
    partitions: tuple[PartitionRows, ...]
    total_rows: int | None
    default_rows: int | None
    partition_count: int
    active: int
    empty: int
    unknown: int
    avg: float | None
    max: int | None
    min: int | None
    skew_ratio: float | None
    cv: float | None
    hot: int
    cold: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return asdict(self)


def summarize(source: Source, partitioned: bool, partitions: list[PartitionRows]) -> Distribution:
    """Compute totals, skew ratio, coefficient of variation and hot/cold counts."""
    regular = [p for p in partitions if not p.is_default]
    known = [p.rows for p in regular if p.rows is not None]
    default = next((p for p in partitions if p.is_default), None)
    unknown = sum(1 for p in partitions if p.rows is None)
    total = None if unknown else sum(p.rows or 0 for p in partitions)
    avg = statistics.fmean(known) if known else None
    cv = None
    if avg is not None and avg > 0 and len(known) > 1:
        cv = statistics.pstdev(known) / avg
    elif avg is not None and len(known) == 1:
        cv = 0.0
    return Distribution(
        source=source,
        partitioned=partitioned,
        partitions=tuple(partitions),
        total_rows=total,
        default_rows=default.rows if default else None,
        partition_count=len(regular),
        active=sum(1 for rows in known if rows > 0),
        empty=sum(1 for rows in known if rows == 0),
        unknown=unknown,
        avg=avg,
        max=max(known) if known else None,
        min=min(known) if known else None,
        skew_ratio=(max(known) / avg) if known and avg else None,
        cv=cv,
        hot=sum(1 for rows in known if avg and rows > HOT_FACTOR * avg),
        cold=sum(1 for rows in known if avg and rows < COLD_FACTOR * avg),
    )


_LEAVES_SQL = """
WITH RECURSIVE tree(relid) AS (
    SELECT {table}::regclass::oid
    UNION ALL
    SELECT i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.relid
)
SELECT c.oid, c.relname, c.relkind, c.reltuples, c.relpages,
       c.oid IN (SELECT partdefid FROM pg_partitioned_table) AS is_default,
       s.n_live_tup,
       coalesce(s.n_tup_ins + s.n_tup_upd + s.n_tup_del, 0) > 0
         OR coalesce(s.last_vacuum, s.last_autovacuum, s.last_analyze, s.last_autoanalyze) IS NOT NULL
         AS stats_known
FROM tree
JOIN pg_class c ON c.oid = tree.relid
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
ORDER BY c.relname
"""


def _leaves(conn: psycopg.Connection[Any], spec: KeySpec) -> tuple[bool, list[dict[str, Any]]]:
    """Whether the table is partitioned, and its leaf relations with their statistics."""
    query = sql.SQL(_LEAVES_SQL).format(table=sql.Literal(spec.table_ident.as_string(conn)))
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        rows = cur.execute(query).fetchall()
    partitioned = any(r["relkind"] == "p" for r in rows)
    return partitioned, [r for r in rows if r["relkind"] == "r"]


def _estimate(row: dict[str, Any], server_version: int) -> int | None:
    """Best statistics-only row count: n_live_tup when the stats system saw the table, else reltuples."""
    if row["stats_known"] and row["n_live_tup"] is not None:
        return int(row["n_live_tup"])
    reltuples = float(row["reltuples"])
    # reltuples is -1 before the first ANALYZE on 14+, and an ambiguous 0 with relpages 0 on 13 and older.
    if reltuples < 0 or (server_version < 140000 and reltuples == 0 and int(row["relpages"]) == 0):
        return None
    return round(reltuples)


def estimated_distribution(conn: psycopg.Connection[Any], spec: KeySpec) -> Distribution:
    """Rows per partition from pg_class and pg_stat_user_tables: catalog reads only."""
    partitioned, leaves = _leaves(conn, spec)
    version = conn.info.server_version
    partitions = [
        PartitionRows(name=r["relname"], rows=_estimate(r, version), is_default=bool(r["is_default"])) for r in leaves
    ]
    return summarize("estimate", partitioned, partitions)


def exact_distribution(conn: psycopg.Connection[Any], spec: KeySpec) -> Distribution:
    """Rows per partition counted with one scan grouped by tableoid."""
    partitioned, leaves = _leaves(conn, spec)
    query = sql.SQL("SELECT tableoid, count(*) FROM {} GROUP BY tableoid").format(spec.table_ident)
    counts = {int(oid): int(n) for oid, n in conn.execute(query).fetchall()}
    partitions = [
        PartitionRows(name=r["relname"], rows=counts.get(int(r["oid"]), 0), is_default=bool(r["is_default"]))
        for r in leaves
    ]
    return summarize("exact", partitioned, partitions)


def finite(value: float | None) -> float:
    """A metric value: NaN for unknown."""
    return math.nan if value is None else float(value)

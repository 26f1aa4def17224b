"""Rows and bytes per partition, from the statistics (cheap) or exact counts, and the skew figures derived from them."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql

from exporter.keyspec import KeySpec
from exporter.pg.catalog import relation_tree

Source = Literal["estimate", "exact"]
HOT_FACTOR, COLD_FACTOR = 1.2, 0.8  # semantik's own thresholds for hot and cold partitions


@dataclass(frozen=True, slots=True)
class PartitionRows:
    """Rows, bytes and upkeep of one leaf relation; None when the catalog cannot tell."""

    name: str
    rows: int | None
    is_default: bool
    heap_bytes: int | None = None
    index_bytes: int | None = None
    toast_bytes: int | None = None
    dead_rows: int | None = None
    last_vacuum: float | None = None  # unix time of the later of the last VACUUM and autovacuum
    last_analyze: float | None = None  # unix time of the later of the last ANALYZE and autoanalyze
    stale: bool = False  # never analyzed, or changed enough since that autovacuum would analyze it again

    @property
    def bytes(self) -> int | None:
        """Heap, indexes and TOAST together; None when the sizes are unknown."""
        if self.heap_bytes is None or self.index_bytes is None or self.toast_bytes is None:
            return None
        return self.heap_bytes + self.index_bytes + self.toast_bytes


def mark(value: int | None, avg: float | None) -> Literal["hot", "cold", ""]:
    """hot above 1.2x the average, cold below 0.8x, else empty: the same rule as the hot/cold counts."""
    if value is None or not avg:
        return ""
    if value > HOT_FACTOR * avg:
        return "hot"
    return "cold" if value < COLD_FACTOR * avg else ""


@dataclass(frozen=True)
class Spread:
    """Average, extremes, max/avg and coefficient of variation of some known values."""

    avg: float | None
    max: int | None
    min: int | None
    ratio: float | None
    cv: float | None


def spread(known: list[int]) -> Spread:
    """The skew figures of a list of per-partition values."""
    avg = statistics.fmean(known) if known else None
    cv = None
    if avg is not None and avg > 0 and len(known) > 1:
        cv = statistics.pstdev(known) / avg
    elif avg is not None and len(known) == 1:
        cv = 0.0
    return Spread(
        avg=avg,
        max=max(known) if known else None,
        min=min(known) if known else None,
        ratio=(max(known) / avg) if known and avg else None,
        cv=cv,
    )


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
    heap_bytes: int | None = None  # parent totals over every leaf, the DEFAULT partition included
    index_bytes: int | None = None
    toast_bytes: int | None = None
    bytes_avg: float | None = None  # figures over the non-default partitions with known sizes, like the rows
    bytes_max: int | None = None
    bytes_skew_ratio: float | None = None
    bytes_cv: float | None = None
    stale: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return asdict(self)


def _total(partitions: list[PartitionRows], kind: str) -> int | None:
    """One kind of bytes summed over every leaf; None when any leaf's size is unknown."""
    values = [getattr(p, f"{kind}_bytes") for p in partitions]
    return None if any(v is None for v in values) else sum(values)


def summarize(source: Source, partitioned: bool, partitions: list[PartitionRows]) -> Distribution:
    """Compute totals, skew ratio, coefficient of variation and hot/cold counts, for rows and for bytes."""
    regular = [p for p in partitions if not p.is_default]
    known = [p.rows for p in regular if p.rows is not None]
    default = next((p for p in partitions if p.is_default), None)
    unknown = sum(1 for p in partitions if p.rows is None)
    total = None if unknown else sum(p.rows or 0 for p in partitions)
    rows = spread(known)
    sizes = spread([b for b in (p.bytes for p in regular) if b is not None])
    return Distribution(
        source=source,
        partitioned=partitioned,
        partitions=tuple(partitions),
        total_rows=total,
        default_rows=default.rows if default else None,
        partition_count=len(regular),
        active=sum(1 for n in known if n > 0),
        empty=sum(1 for n in known if n == 0),
        unknown=unknown,
        avg=rows.avg,
        max=rows.max,
        min=rows.min,
        skew_ratio=rows.ratio,
        cv=rows.cv,
        hot=sum(1 for n in known if mark(n, rows.avg) == "hot"),
        cold=sum(1 for n in known if mark(n, rows.avg) == "cold"),
        heap_bytes=_total(partitions, "heap") if partitions else None,
        index_bytes=_total(partitions, "index") if partitions else None,
        toast_bytes=_total(partitions, "toast") if partitions else None,
        bytes_avg=sizes.avg,
        bytes_max=sizes.max,
        bytes_skew_ratio=sizes.ratio,
        bytes_cv=sizes.cv,
        stale=sum(1 for p in partitions if p.stale),
    )


LEAVES_SQL = (
    relation_tree("{table}::regclass::oid")
    + """SELECT c.oid, c.relname, c.relkind, c.reltuples, c.relpages,
       c.oid IN (SELECT partdefid FROM pg_partitioned_table) AS is_default,
       s.n_live_tup,
       coalesce(s.n_tup_ins + s.n_tup_upd + s.n_tup_del, 0) > 0
         OR coalesce(s.last_vacuum, s.last_autovacuum, s.last_analyze, s.last_autoanalyze) IS NOT NULL
         AS stats_known,
       -- Sizes from the catalog's page counts (kept by VACUUM, ANALYZE and CREATE INDEX), not pg_relation_size():
       -- that one takes AccessShareLock and would queue this check behind a migration's ACCESS EXCLUSIVE lock.
       c.relpages::bigint AS heap_pages,
       (SELECT coalesce(sum(ic.relpages), 0) FROM pg_index x JOIN pg_class ic ON ic.oid = x.indexrelid
        WHERE x.indrelid = c.oid)::bigint AS index_pages,
       -- The TOAST table and its index in two lookups: one `oid = … OR oid IN (…)` filter cannot use pg_class's
       -- index and scanned the whole of pg_class once per leaf (350 ms at 1,000 partitions, every minute).
       ((SELECT coalesce(sum(tc.relpages), 0) FROM pg_class tc WHERE tc.oid = c.reltoastrelid)
        + (SELECT coalesce(sum(ti.relpages), 0) FROM pg_index tx JOIN pg_class ti ON ti.oid = tx.indexrelid
           WHERE tx.indrelid = c.reltoastrelid))::bigint AS toast_pages,
       current_setting('block_size')::bigint AS block_size,
       s.n_dead_tup,
       s.n_mod_since_analyze,
       extract(epoch FROM greatest(s.last_vacuum, s.last_autovacuum))::float8 AS last_vacuum,
       extract(epoch FROM greatest(s.last_analyze, s.last_autoanalyze))::float8 AS last_analyze
FROM tree
JOIN pg_class c ON c.oid = tree.relid
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
ORDER BY c.relname
"""
)

# autovacuum's default analyze trigger: 50 rows plus 10% of the table changed since the last ANALYZE.
ANALYZE_THRESHOLD, ANALYZE_SCALE_FACTOR = 50, 0.1


def _leaves(conn: psycopg.Connection[Any], spec: KeySpec) -> tuple[bool, list[dict[str, Any]]]:
    """Whether the table is partitioned, and its leaf relations with their statistics."""
    query = sql.SQL(LEAVES_SQL).format(table=sql.Literal(spec.table_ident.as_string(conn)))
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


def _pages_known(row: dict[str, Any], server_version: int) -> bool:
    """False for a relation no VACUUM, ANALYZE or CREATE INDEX has measured: its relpages is a placeholder 0."""
    if row["last_vacuum"] is not None or row["last_analyze"] is not None or int(row["heap_pages"]) > 0:
        return True
    reltuples = float(row["reltuples"])
    return not (reltuples < 0 or (server_version < 140000 and reltuples == 0))


def _is_stale(row: dict[str, Any]) -> bool:
    """Never analyzed, or changed by more rows since the last ANALYZE than would make autovacuum analyze it."""
    if row["last_analyze"] is None:
        return True
    changed = row["n_mod_since_analyze"]
    threshold = ANALYZE_THRESHOLD + ANALYZE_SCALE_FACTOR * max(float(row["reltuples"]), 0.0)
    return changed is not None and int(changed) > threshold


def _partition(row: dict[str, Any], rows: int | None, server_version: int) -> PartitionRows:
    """One leaf with its row count and what the catalog says about its size and upkeep."""
    known = _pages_known(row, server_version)
    block = int(row["block_size"])

    def size(pages: str) -> int | None:
        return int(row[pages]) * block if known else None

    return PartitionRows(
        name=row["relname"],
        rows=rows,
        is_default=bool(row["is_default"]),
        heap_bytes=size("heap_pages"),
        index_bytes=size("index_pages"),
        toast_bytes=size("toast_pages"),
        dead_rows=None if row["n_dead_tup"] is None else int(row["n_dead_tup"]),
        last_vacuum=row["last_vacuum"],
        last_analyze=row["last_analyze"],
        stale=_is_stale(row),
    )


def estimated_distribution(conn: psycopg.Connection[Any], spec: KeySpec) -> Distribution:
    """Rows per partition from pg_class and pg_stat_user_tables: catalog reads only."""
    partitioned, leaves = _leaves(conn, spec)
    version = conn.info.server_version
    partitions = [_partition(r, _estimate(r, version), version) for r in leaves]
    return summarize("estimate", partitioned, partitions)


def exact_distribution(conn: psycopg.Connection[Any], spec: KeySpec) -> Distribution:
    """Rows per partition counted with one scan grouped by tableoid."""
    partitioned, leaves = _leaves(conn, spec)
    query = sql.SQL("SELECT tableoid, count(*) FROM {} GROUP BY tableoid").format(spec.table_ident)
    counts = {int(oid): int(n) for oid, n in conn.execute(query).fetchall()}
    version = conn.info.server_version
    partitions = [_partition(r, counts.get(int(r["oid"]), 0), version) for r in leaves]
    return summarize("exact", partitioned, partitions)


def finite(value: float | None) -> float:
    """A metric value: NaN for unknown."""
    return math.nan if value is None else float(value)

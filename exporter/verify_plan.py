"""Plan full verification per leaf relation from the catalog: a loose index scan or one GROUP BY pass."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import psycopg

from exporter.keyspec import KeySpec
from exporter.pg.catalog import relation_tree

VerifyPath = Literal["loose-index-scan", "group-by", "known-values", "row-by-row"]

# Source column types whose equality implies an identical text form. The key is computed from each source column's
# text (KeySpec casts every column to text), so grouping rows by the native value (GROUP BY, the loose scan's
# `(cols) > (previous)`, the known values' `= ANY`) and evaluating the key once per group is exact only for these:
# - int2/int4/int8: one value, one text;
# - uuid: compared bytewise, printed in one canonical lower-case form;
# - text/varchar/name, with a deterministic collation: equal only when bytewise equal (name is always "C");
# - bpchar, deterministic collation: equality ignores trailing spaces, and its ::text cast strips them, so equal
#   values give the same text ('a ' and 'a' both cast to 'a').
# Not here: numeric (1.0 = 1.00), float4/float8 (0 = -0), citext and nondeterministic collations ('a' = 'A'),
# and every type not checked. Those are verified row by row.
SAFE_TYPES = frozenset({"int2", "int4", "int8", "uuid", "text", "varchar", "bpchar", "name"})
# Types whose equality depends on a collation: safe only under a deterministic one.
COLLATABLE_TYPES = frozenset({"text", "varchar", "bpchar", "name"})

# A loose index scan descends the index once per distinct value; the GROUP BY pass reads every index entry in
# order. Measured side by side on the partitioned table (bench/verify_cost.py, 2026-11-30 05:18 UTC, 10M rows):
# a descent cost ~31 us, the planner's ordered pass ~83 ns per row, so the loose scan pays below ~0.27% distinct
# values per row: at 0.05% it took 0.23x count(*) against 0.94x, at ~0.9% 2.3x against 0.85x. ANALYZE's n_distinct
# undercounts skewed data (up to ~2x here), so the limit on the estimate is 0.1%. (A 2% limit, tried the same
# day from a plain-table comparison against a hash aggregate over a sequential scan, made the 0.9% case 2.8x.)
LOOSE_MAX_DISTINCT_SHARE = 0.001

_SINGLE_VALUE = re.compile(r"^FOR VALUES IN \((-?\d+)\)$")


@dataclass(frozen=True, slots=True)
class LeafPlan:
    """How one leaf relation is verified, and why (shown in the report and JSON)."""

    relation: str
    path: VerifyPath
    reason: str
    list_value: int | None = None
    index: str | None = None
    index_columns: tuple[str, ...] = ()
    estimated_rows: int = 0
    estimated_distinct: float | None = None
    # The role may read this leaf by name (else it is read through the table, which costs index-only scans).
    readable: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        data = asdict(self)
        data["index_columns"] = list(self.index_columns)
        return data


# What planning reads of each leaf, after its oid: schema, name, partition bound, whether the table is LIST-partitioned
# by the key alone (its direct partitions only), estimated and live rows, SELECT privilege. The plan cache's
# fingerprint query selects the same columns, so a run that misses the cache reads the tree once (LeafTuple).
LEAF_COLUMNS = """n.nspname, c.relname,
       CASE WHEN c.relispartition THEN pg_catalog.pg_get_expr(c.relpartbound, c.oid) END,
       (SELECT p.partstrat = 'l' AND p.partnatts = 1 AND a.attname = %(key)s
          FROM pg_catalog.pg_partitioned_table p
          JOIN pg_catalog.pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
         WHERE p.partrelid = tree.parent AND tree.parent = %(table)s::regclass::oid),
       greatest(c.reltuples, 0)::bigint, pg_catalog.pg_stat_get_live_tuples(c.oid),
       pg_catalog.has_table_privilege(c.oid, 'SELECT')"""

# (oid, schema, name, bound, list_by_key, reltuples, live rows, readable): one leaf as LEAF_COLUMNS reads it.
LeafTuple = tuple[int, str, str, str | None, bool | None, int, int, bool]

_LEAVES = (
    relation_tree("%(table)s::regclass::oid")
    + "SELECT c.oid, "
    + LEAF_COLUMNS
    + """
FROM tree
JOIN pg_catalog.pg_class c ON c.oid = tree.relid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
ORDER BY c.relname
"""
)

# Valid, non-partial btree indexes with their leading plain columns, ascending, in default operator classes:
# the shape a `(cols) > (previous) ORDER BY cols LIMIT 1` probe can descend.
_INDEXES = """
SELECT i.indrelid, i.indexrelid::regclass::text,
       array(SELECT a.attname::text
               FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
               JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE k.ord <= i.indnkeyatts
                AND (i.indoption::int2[])[k.ord - 1] = 0
                AND EXISTS (SELECT 1 FROM pg_catalog.pg_opclass o
                             WHERE o.oid = (i.indclass::oid[])[k.ord - 1] AND o.opcdefault)
              ORDER BY k.ord)
FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
JOIN pg_catalog.pg_am am ON am.oid = ic.relam
WHERE i.indrelid = ANY(%(oids)s) AND i.indisvalid AND i.indpred IS NULL AND am.amname = 'btree'
ORDER BY i.indnatts, ic.relname
"""

_DISTINCT = """
SELECT c.oid, s.attname::text, s.n_distinct
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_stats s ON s.schemaname = n.nspname AND s.tablename = c.relname AND NOT s.inherited
WHERE c.oid = ANY(%(oids)s) AND s.attname = ANY(%(columns)s)
"""


def leading_index(indexes: list[tuple[str, list[str]]], sources: tuple[str, ...]) -> tuple[str, tuple[str, ...]] | None:
    """The first index whose leading columns are exactly the source columns (in any order), with that order."""
    for name, columns in indexes:
        # Only the leading plain, ascending, default-opclass columns were listed; stop at the first gap.
        leading = tuple(columns[: len(sources)])
        if len(leading) == len(sources) and set(leading) == set(sources):
            return name, leading
    return None


def _estimated_distinct(stats: dict[str, float], sources: tuple[str, ...], rows: int) -> float | None:
    """Distinct source tuples from pg_stats.n_distinct (negative: a share of the rows); None without statistics."""
    product = 1.0
    for column in sources:
        if column not in stats:
            return None
        value = stats[column]
        product *= -value * rows if value < 0 else value
    # Each column's count multiplies into an upper bound for the tuples, capped by the rows.
    return min(product, float(rows)) if rows else product


@dataclass(frozen=True)
class LeafRow:
    """One leaf relation as the catalog describes it (nothing here changes without DDL or a GRANT)."""

    oid: int
    relation: str
    bound: str | None
    list_by_key: bool
    readable: bool


@dataclass(frozen=True)
class Catalog:
    """What planning reads from the catalog, apart from row counts (which change with every write)."""

    leaves: tuple[LeafRow, ...]
    indexes: dict[int, list[tuple[str, list[str]]]]
    stats: dict[int, dict[str, float]]
    nullable: tuple[str, ...]
    # (column, "column type") of each source column whose equality may join values of different text (in order).
    unsafe: tuple[tuple[str, str], ...] = ()


_NULLABLE = """
SELECT a.attname::text FROM pg_catalog.pg_attribute a
WHERE a.attrelid = %(table)s::regclass AND a.attname = ANY(%(columns)s) AND NOT a.attnotnull
"""


# Each source column's type name (pg_catalog types only count as known) and whether its collation is
# deterministic. pg_collation.collisdeterministic exists from PostgreSQL 12; before, every collation is.
_TYPES = """
SELECT a.attname::text, format_type(a.atttypid, a.atttypmod),
       CASE WHEN tn.nspname = 'pg_catalog' THEN t.typname::text END,
       {deterministic}
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace
WHERE a.attrelid = %(table)s::regclass AND a.attname = ANY(%(columns)s)
"""
_DETERMINISTIC = (
    "coalesce((SELECT co.collisdeterministic FROM pg_catalog.pg_collation co WHERE co.oid = a.attcollation), true)"
)


def unsafe_sources(conn: psycopg.Connection[Any], spec: KeySpec) -> tuple[tuple[str, str], ...]:
    """The source columns whose values may be equal without an identical text form: (column, "column type")."""
    deterministic = _DETERMINISTIC if conn.info.server_version >= 120000 else "true"
    query = _TYPES.replace("{deterministic}", deterministic)
    rows = conn.execute(
        query, {"table": spec.table_ident.as_string(conn), "columns": list(spec.source_columns)}
    ).fetchall()
    found = {str(name): (str(shown), kind, bool(det)) for name, shown, kind, det in rows}
    unsafe = []
    for column in spec.source_columns:
        shown, kind, det = found[column]
        if kind not in SAFE_TYPES:
            unsafe.append((column, f"{column} {shown}"))
        elif kind in COLLATABLE_TYPES and not det:
            unsafe.append((column, f"{column} {shown} (nondeterministic collation)"))
    return tuple(unsafe)


def read_catalog(
    conn: psycopg.Connection[Any], spec: KeySpec, leaves: Sequence[LeafTuple] | None = None
) -> tuple[Catalog, dict[int, int]]:
    """The catalog a plan is made from, and each leaf's estimated rows (n_live_tup, else reltuples).

    LEAVES, when given, are the leaf rows the caller has read already (in name order): the tree is not read again.
    """
    table = spec.table_ident.as_string(conn)
    if leaves is None:
        leaves = conn.execute(_LEAVES, {"table": table, "key": spec.key_column}).fetchall()
    oids = [row[0] for row in leaves]
    indexes: dict[int, list[tuple[str, list[str]]]] = {}
    for relid, name, columns in conn.execute(_INDEXES, {"oids": oids}).fetchall():
        indexes.setdefault(relid, []).append((name, list(columns)))
    stats: dict[int, dict[str, float]] = {}
    sources = spec.source_columns
    for relid, column, n_distinct in conn.execute(_DISTINCT, {"oids": oids, "columns": list(sources)}).fetchall():
        stats.setdefault(relid, {})[column] = float(n_distinct)
    nullable = conn.execute(_NULLABLE, {"table": table, "columns": list(sources)}).fetchall()
    rows = {int(oid): int(live) if live > 0 else int(reltuples) for oid, *_, reltuples, live, _ in leaves}
    catalog = Catalog(
        leaves=tuple(
            LeafRow(int(oid), f"{schema}.{name}", bound, bool(list_by_key), bool(readable))
            for oid, schema, name, bound, list_by_key, _, _, readable in leaves
        ),
        indexes=indexes,
        stats=stats,
        # In the table's column order, whatever order ANY() returned them in.
        nullable=tuple(c for c in sources if c in {str(r[0]) for r in nullable}),
        unsafe=unsafe_sources(conn, spec),
    )
    return catalog, rows


def plan_catalog(catalog: Catalog, rows: dict[int, int], spec: KeySpec) -> list[tuple[int, LeafPlan]]:
    """(oid, plan) for every leaf: the catalog's shapes with the current row estimates (pure, no query)."""
    plans = []
    for leaf in catalog.leaves:
        if catalog.unsafe:
            # Grouping by value would join rows whose keys differ (1.0 and 1.00): every row is evaluated alone.
            described = ", ".join(text for _, text in catalog.unsafe)
            reason = f"source {described}: equal values may differ in text, so the key is per row"
            row = LeafPlan(leaf.relation, "row-by-row", reason, estimated_rows=rows.get(leaf.oid, 0))
            plans.append((leaf.oid, replace(row, readable=leaf.readable)))
            continue
        plan = _plan_one(
            leaf.relation,
            leaf.bound,
            leaf.list_by_key,
            rows.get(leaf.oid, 0),
            catalog.indexes.get(leaf.oid, []),
            catalog.stats.get(leaf.oid, {}),
            spec.source_columns,
        )
        plans.append((leaf.oid, replace(plan, readable=leaf.readable)))
    return plans


def _plan_one(
    relation: str,
    bound: str | None,
    list_by_key: bool,
    rows: int,
    indexes: list[tuple[str, list[str]]],
    stats: dict[str, float],
    sources: tuple[str, ...],
) -> LeafPlan:
    """One leaf's path: the loose scan needs one LIST value of the key, a leading index, and few distinct values."""
    if bound is None:
        return LeafPlan(relation, "group-by", "not a partition: keys vary per row", estimated_rows=rows)
    if bound == "DEFAULT":
        return LeafPlan(relation, "group-by", "DEFAULT partition: keys vary per row", estimated_rows=rows)
    match = _SINGLE_VALUE.match(bound)
    if not list_by_key or match is None:
        # Also a leaf of a sub-partitioned table: its bound is relative to a parent that is not the table.
        return LeafPlan(
            relation, "group-by", f"bound {bound!r} is not one LIST value of the table's key", estimated_rows=rows
        )
    value = int(match.group(1))
    found = leading_index(indexes, sources)
    if found is None:
        return LeafPlan(
            relation,
            "group-by",
            f"no btree index leads with {', '.join(sources)}",
            list_value=value,
            estimated_rows=rows,
        )
    index, columns = found
    distinct = _estimated_distinct(stats, sources, rows)
    if distinct is not None and rows > 0 and distinct > LOOSE_MAX_DISTINCT_SHARE * rows:
        return LeafPlan(
            relation,
            "group-by",
            f"about {distinct:,.0f} distinct values in {rows:,} rows: one pass reads less than a descent per value",
            list_value=value,
            index=index,
            index_columns=columns,
            estimated_rows=rows,
            estimated_distinct=distinct,
        )
    return LeafPlan(
        relation,
        "loose-index-scan",
        f"one LIST value ({value}), index {index}",
        list_value=value,
        index=index,
        index_columns=columns,
        estimated_rows=rows,
        estimated_distinct=distinct,
    )

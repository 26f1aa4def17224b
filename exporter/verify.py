"""Count rows whose partition key differs from the key expression (shared by the exporter and migrations)."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import psycopg
from psycopg import sql

from exporter import verify_known
from exporter.formula import Column
from exporter.keyspec import KeySpec, source_sql
from exporter.pg.catalog import relation_tree
from exporter.verify_cache import PlanCache, _Entry, digest
from exporter.verify_known import (
    MIN_SERVER,
    KnownBad,
    KnownLeaf,
    KnownValues,
    array_literal,
    server_run,
)
from exporter.verify_plan import LeafPlan, plan_catalog, read_catalog, unsafe_sources

log = logging.getLogger(__name__)

# Bad groups counted per statement (a UNION ALL of index lookups): few round trips, a statement of bounded size.
COUNT_BATCH = 200

Mode = Literal["incremental", "sample", "full"]
BadKind = Literal["mismatch", "null", "error"]


@dataclass(frozen=True)
class BadRow:
    """One example of a bad row, for the report only (never a metric label)."""

    kind: BadKind
    relation: str
    primary_key: dict[str, str]
    stored_key: int | None
    expected_key: int | None
    error: str | None = None


@dataclass(frozen=True)
class BadPair:
    """One (relation, stored key, source values) group whose rows all share the same wrong, NULL or raising key."""

    kind: BadKind
    relation: str
    stored_key: int | None
    source: tuple[str | None, ...]
    expected_key: int | None
    rows: int


@dataclass(frozen=True, slots=True)
class PartitionVerification:
    """Which path one leaf relation took in a full pass, and what it saw."""

    plan: LeafPlan
    rows: int
    rows_exact: bool
    distinct_values: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        data = self.plan.to_dict()
        data.update(rows=self.rows, rows_exact=self.rows_exact, distinct_values=self.distinct_values)
        return data


@dataclass(frozen=True)
class VerificationResult:
    """The outcome of one verification pass."""

    mode: Mode
    rows_checked: int
    mismatched: int
    null_keys: int
    expression_errors: int
    examples: tuple[BadRow, ...] = ()
    watermark: Any = None
    sample_percent: float | None = None
    duration_seconds: float = 0.0
    note: str | None = None
    # Full passes only: the path each leaf relation took, and every bad group (capped at pairs_limit).
    partitions: tuple[PartitionVerification, ...] = ()
    bad_pairs: tuple[BadPair, ...] = ()
    bad_pairs_total: int = 0
    # Rows of rows_checked read from statistics (n_live_tup) instead of counted: loose-scanned partitions.
    rows_estimated: int = 0

    @property
    def correct(self) -> int:
        """Rows whose key matched the expression (never negative, even against an estimated row count)."""
        return max(0, self.rows_checked - self.mismatched - self.null_keys - self.expression_errors)

    @property
    def clean(self) -> bool:
        """True when no bad row of any kind was found."""
        return self.mismatched == 0 and self.null_keys == 0 and self.expression_errors == 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        data = asdict(self)
        data["correct"] = self.correct
        data["watermark"] = None if self.watermark is None else str(self.watermark)
        data["partitions"] = [p.to_dict() for p in self.partitions]
        data["bad_pairs"] = [{**asdict(b), "source": list(b.source)} for b in self.bad_pairs]
        return data


@dataclass
class _Tally:
    """Mutable counts while one pass reads its groups."""

    checked: int = 0
    estimated: int = 0
    mismatched: int = 0
    null_keys: int = 0
    errors: int = 0
    examples: list[BadRow] = field(default_factory=list)
    pairs: list[BadPair] = field(default_factory=list)
    pairs_total: int = 0


@dataclass
class _Group:
    """One evaluated (relation, stored key, source values) group as the server returned it."""

    oid: int
    stored: int | None
    text: tuple[str | None, ...]
    native: tuple[Any, ...]
    rows: int | None
    raises: bool
    expected: int | None
    error: str | None = None
    example: str | None = None  # the ctid of one of its rows, when the pass that found it read one


def _sortable(value: Any) -> tuple[bool, Any]:
    """A sort key that puts None last and compares values of one kind."""
    return (value is None, value if value is not None else 0)


@dataclass
class _Leaf:
    """A leaf relation's name and oid (it is read through the table: the role needs SELECT on the table only)."""

    label: str
    oid: int


class Verifier:
    """Verifies a table's keys by evaluating the expression once per distinct (relation, key, source) group.

    Full passes plan each leaf relation from the catalog: a single-value LIST partition with an index leading
    with the source columns lists its distinct values with a loose index scan (its key is fixed by the partition
    constraint); every other leaf is read once with GROUP BY. Sample and incremental passes group the rows of
    their window. Expression errors are predicted (the legacy formula raises only where hashtext is INT_MIN);
    an error nobody predicted is isolated by evaluating each distinct value on its own.
    """

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        spec: KeySpec,
        *,
        primary_key: tuple[str, ...] = (),
        examples_limit: int = 10,
        pairs_limit: int = 1000,
        exact_rows: bool = False,
        plan_cache: PlanCache | None = None,
    ) -> None:
        self.conn = conn
        self.spec = spec
        self.primary_key = primary_key
        self.examples_limit = examples_limit
        self.pairs_limit = pairs_limit
        # Loose-scanned partitions take their row count from statistics unless asked to count (an index scan).
        self.exact_rows = exact_rows
        # Catalog reads and built statements kept between runs of the same table until its schema changes.
        self.plan_cache = plan_cache
        self._list_values: dict[int, int] = {}
        # Set by _full_statements for the run: each leaf's bound, the nullable source columns, the cache entry, the
        # values earlier passes remembered (valid for this server run) and the server run itself.
        self._bounds: dict[int, str | None] = {}
        self._nullable: list[str] = []
        self._entry: _Entry | None = None
        self._known: KnownValues | None = None
        self._leaves: dict[int, KnownLeaf] = {}  # self._known unpacked
        self._server: str | None = None
        # Source columns whose equality is coarser than their text (numeric 1.0 = 1.00): read once, when needed.
        self._unsafe: frozenset[str] | None = None

    def relations(self) -> list[tuple[str, str]]:
        """(schema, name) of every leaf relation that holds rows: the partitions, or the table itself."""
        return [(schema, name) for _, (schema, name) in self._leaf_names()]

    def _leaf_names(self) -> list[tuple[int, tuple[str, str]]]:
        """(oid, (schema, name)) of every leaf relation."""
        rows = self.conn.execute(
            relation_tree("%(oid)s::regclass::oid")
            + """SELECT c.oid, n.nspname, c.relname FROM tree
               JOIN pg_class c ON c.oid = tree.relid JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relkind = 'r' ORDER BY c.relname""",
            {"oid": self.spec.table_ident.as_string(self.conn)},
        ).fetchall()
        return [(int(row[0]), (row[1], row[2])) for row in rows]

    def run(
        self,
        mode: Mode,
        *,
        sample_percent: float = 1.0,
        watermark_column: str | None = None,
        after: Any = None,
        upto: Any = None,
    ) -> VerificationResult:
        """Verify the rows selected by mode; incremental takes rows with after < column <= upto."""
        started = time.monotonic()
        filters = self._filters(mode, watermark_column, after, upto)
        tally = _Tally()
        partitions: tuple[PartitionVerification, ...] = ()
        if mode == "full":
            partitions = self._full(tally)
        else:
            self._window(mode, sample_percent, filters, tally)
        return VerificationResult(
            mode=mode,
            rows_checked=tally.checked,
            mismatched=tally.mismatched,
            null_keys=tally.null_keys,
            expression_errors=tally.errors,
            examples=tuple(tally.examples),
            watermark=upto if mode == "incremental" else None,
            sample_percent=sample_percent if mode == "sample" else None,
            duration_seconds=time.monotonic() - started,
            partitions=partitions,
            bad_pairs=tuple(tally.pairs),
            bad_pairs_total=tally.pairs_total,
            rows_estimated=tally.estimated,
        )

    @staticmethod
    def _filters(mode: Mode, watermark_column: str | None, after: Any, upto: Any) -> list[sql.Composable]:
        """The WHERE conditions a mode adds: the watermark window for incremental runs."""
        if mode != "incremental":
            return []
        if watermark_column is None:
            raise ValueError("incremental verification needs a watermark column")
        column = sql.Identifier(watermark_column)
        filters: list[sql.Composable] = [sql.SQL("{} <= {}").format(column, sql.Literal(upto))]
        if after is not None:
            filters.insert(0, sql.SQL("{} > {}").format(column, sql.Literal(after)))
        return filters

    # --- SQL pieces -------------------------------------------------------------------------------------------

    def _columns(self, prefix: str | None = None) -> sql.Composable:
        """The source columns, comma-separated, optionally qualified."""
        if prefix is None:
            return sql.SQL(", ").join(sql.Identifier(c) for c in self.spec.source_columns)
        return sql.SQL(", ").join(sql.Identifier(prefix, c) for c in self.spec.source_columns)

    def _index_columns(self, plan: LeafPlan, prefix: str | None = None) -> sql.Composable:
        """The source columns in the index's order, so ORDER BY and row comparisons can descend it."""
        names = plan.index_columns or self.spec.source_columns
        if prefix is None:
            return sql.SQL(", ").join(sql.Identifier(c) for c in names)
        return sql.SQL(", ").join(sql.Identifier(prefix, c) for c in names)

    def _raises(self) -> sql.Composable:
        """True for the source values whose expression raises: only hashtext = INT_MIN under the legacy formula."""
        spec = self.spec
        if spec.formula != "legacy":
            return sql.SQL("false")  # abs(hashtext(x) % n) cannot overflow
        # The same hashtext() argument KeySpec.expression() builds: a column, or a composite source in parentheses.
        if spec.source is None or isinstance(spec.source, Column):
            hashed: sql.Composable = sql.Identifier(
                spec.source.name if isinstance(spec.source, Column) else spec.source_column
            )
        else:
            hashed = sql.SQL("({})").format(source_sql(spec.source))
        return sql.SQL("coalesce(hashtext({}::text) = -2147483648, false)").format(hashed)

    def _fixed_key_groups(self, oid: int, plan: LeafPlan, extra: sql.Composable | None = None) -> sql.Composed:
        """One single-value partition's source groups; the key is fixed by the bound, so only sources are grouped.

        Read by name when the role may (an index leading with the sources then serves the pass as an index-only
        scan), else through the table with `key = value`, which prunes to the partition.
        """
        key = sql.Identifier(self.spec.key_column)
        conditions = [] if plan.readable else [sql.SQL("{} = {}").format(key, sql.Literal(plan.list_value))]
        if extra is not None:
            conditions.append(sql.SQL("({})").format(extra))
        where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")
        return sql.SQL(
            "SELECT {oid}::oid AS _pk_rel, {value} AS {key}, {cols}, count(*) AS _pk_n"
            " FROM {rel}{where} GROUP BY {cols}"
        ).format(
            oid=sql.Literal(oid),
            value=sql.Literal(plan.list_value),
            key=key,
            cols=self._columns(),
            rel=self._relation(plan),
            where=where,
        )

    def _relation(self, plan: LeafPlan) -> sql.Composable:
        """The leaf by name when the role may read it, else the table (callers then add `key = value`)."""
        if plan.readable:
            return sql.SQL("ONLY {}").format(sql.Identifier(*plan.relation.split(".", 1)))
        return self.spec.table_ident

    def _other_groups(self, handled: list[int]) -> sql.Composed:
        """Every leaf not read by key value, in one pass over the table grouped by leaf, key and source.

        Rows of single-value partitions have their key in `handled` (LIST bounds are disjoint), so excluding those
        keys leaves exactly the DEFAULT and multi-value partitions' rows, or the whole table when nothing is handled.
        """
        key = sql.Identifier(self.spec.key_column)
        where: sql.Composable = sql.SQL("")
        if handled:
            listed = sql.SQL(", ").join(sql.Literal(v) for v in sorted(set(handled)))
            where = sql.SQL(" WHERE {key} IS NULL OR {key} <> ALL(ARRAY[{listed}])").format(key=key, listed=listed)
        return sql.SQL(
            "SELECT t.tableoid AS _pk_rel, {key}, {cols}, count(*) AS _pk_n FROM {table} AS t{where}"
            " GROUP BY t.tableoid, {key}, {cols}"
        ).format(key=key, cols=self._columns(), table=self.spec.table_ident, where=where)

    def _loose_scan(self, oid: int, plan: LeafPlan) -> sql.Composed:
        """One single-value partition's distinct non-NULL source tuples by a loose index scan (recursive CTE).

        PostgreSQL 11's form. By name when the role may: through the table, `key = value` is a filter the index
        cannot answer, and PG 11 then prefers a sequential scan for each step.
        """
        key = sql.Identifier(self.spec.key_column)
        cols = self._index_columns(plan)
        conditions = [sql.SQL("{} IS NOT NULL").format(sql.Identifier(c)) for c in plan.index_columns]
        if not plan.readable:
            conditions.insert(0, sql.SQL("{} = {}").format(key, sql.Literal(plan.list_value)))
        first = sql.SQL(" AND ").join(conditions)
        step = sql.SQL(" AND ").join(
            [
                *conditions[: 0 if plan.readable else 1],
                sql.SQL("({}) > ({})").format(cols, self._index_columns(plan, "_pk_d")),
            ]
        )
        return sql.SQL(
            "SELECT {oid}::oid AS _pk_rel, {value} AS {key}, {out}, NULL::bigint AS _pk_n FROM ("
            "WITH RECURSIVE _pk_d AS ("
            "(SELECT {cols} FROM {rel} WHERE {first} ORDER BY {cols} LIMIT 1)"
            " UNION ALL "
            "SELECT _pk_x.* FROM _pk_d CROSS JOIN LATERAL (SELECT {cols} FROM {rel}"
            " WHERE {step} ORDER BY {cols} LIMIT 1) AS _pk_x"
            ") SELECT * FROM _pk_d) AS _pk_l"
        ).format(
            oid=sql.Literal(oid),
            value=sql.Literal(plan.list_value),
            key=key,
            out=self._columns(),
            cols=cols,
            rel=self._relation(plan),
            first=first,
            step=step,
        )

    def _loose_scan_through_parent(self, plans: list[tuple[int, LeafPlan]]) -> sql.Composed:
        """Many single-value partitions' distinct tuples in one statement over the parent, planned once.

        Each partition's LIST value drives a recursive CTE on the parent with `key = value`: PostgreSQL 12+ prunes
        the other partitions at run time and descends that partition's index, so planning costs one statement
        instead of one per partition (PostgreSQL 11 has no run-time pruning under ORDER BY: it gets _loose_scan).
        """
        first = plans[0][1]
        key = sql.Identifier(self.spec.key_column)
        cols = self._index_columns(first)
        not_null = sql.SQL(" AND ").join(
            sql.SQL("{} IS NOT NULL").format(sql.Identifier(c)) for c in first.index_columns
        )
        values = sql.SQL(", ").join(
            sql.SQL("({}, {}::oid)").format(sql.Literal(plan.list_value), sql.Literal(oid)) for oid, plan in plans
        )
        return sql.SQL(
            "SELECT _pk_k.rel AS _pk_rel, _pk_k.k AS {key}, {out}, NULL::bigint AS _pk_n"
            " FROM (VALUES {values}) AS _pk_k(k, rel) CROSS JOIN LATERAL ("
            "WITH RECURSIVE _pk_d AS ("
            "(SELECT {cols} FROM {table} WHERE {key} = _pk_k.k AND {not_null} ORDER BY {cols} LIMIT 1)"
            " UNION ALL "
            "SELECT _pk_x.* FROM _pk_d CROSS JOIN LATERAL (SELECT {cols} FROM {table}"
            " WHERE {key} = _pk_k.k AND ({cols}) > ({previous}) ORDER BY {cols} LIMIT 1) AS _pk_x"
            ") SELECT * FROM _pk_d) AS _pk_l"
        ).format(
            key=key,
            out=self._columns("_pk_l"),
            values=values,
            cols=cols,
            table=self.spec.table_ident,
            not_null=not_null,
            previous=self._index_columns(first, "_pk_d"),
        )

    @staticmethod
    def _null_sources(nullable: list[str]) -> sql.Composable:
        """Rows with a NULL in any source column: the loose scan's row comparisons never reach them."""
        return sql.SQL(" OR ").join(sql.SQL("{} IS NULL").format(sql.Identifier(c)) for c in nullable)

    def _evaluated(self, groups: list[sql.Composable], learn: list[int] | None = None) -> sql.Composed:
        """Evaluate the key once per group; return the bad groups and one total row per relation.

        For the relations in LEARN (single-value partitions whose values are remembered) the total row also lists
        the good non-NULL source texts, unless the relation has more than MAX_VALUES groups.
        """
        key = sql.Identifier(self.spec.key_column)
        texts = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in self.spec.source_columns)
        nulls = sql.SQL(", ").join(sql.SQL("NULL") for _ in self.spec.source_columns)
        good: sql.Composable = sql.SQL("NULL::text[]")
        if learn:
            column = sql.Identifier(self.spec.source_columns[0])
            oids = sql.SQL("ARRAY[{}]::oid[]").format(sql.SQL(", ").join(sql.Literal(oid) for oid in sorted(learn)))
            good = sql.SQL(
                "CASE WHEN count(*) <= {cap} THEN coalesce(array_agg({column}::text) FILTER ("
                "WHERE _pk_rel = ANY({oids}) AND {column} IS NOT NULL"
                " AND NOT (_pk_raises OR {key} IS NULL OR {key} IS DISTINCT FROM _pk_expected)), '{{}}') END"
            ).format(cap=sql.Literal(verify_known.MAX_VALUES), column=column, oids=oids, key=key)
        return sql.SQL(
            "WITH _pk_g AS ({groups}),"
            " _pk_r AS (SELECT _pk_g.*, {raises} AS _pk_raises,"
            " CASE WHEN {raises} THEN NULL ELSE {expr} END AS _pk_expected FROM _pk_g)"
            " SELECT _pk_rel, false, {key}, {texts}, {cols}, _pk_n, _pk_raises, _pk_expected, NULL::bigint,"
            " NULL::text[] FROM _pk_r"
            " WHERE _pk_raises OR {key} IS NULL OR {key} IS DISTINCT FROM _pk_expected"
            " UNION ALL"
            " SELECT _pk_rel, true, NULL, {nulls}, {nulls}, sum(_pk_n)::bigint, NULL, NULL, count(*), {good} FROM _pk_r"
            " GROUP BY _pk_rel"
        ).format(
            good=good,
            groups=sql.SQL(" UNION ALL ").join(groups),
            raises=self._raises(),
            expr=self.spec.expression(),
            key=key,
            texts=texts,
            cols=self._columns(),
            nulls=nulls,
        )

    # --- passes -----------------------------------------------------------------------------------------------

    def full_passes(self) -> tuple[list[tuple[int, LeafPlan]], list[list[sql.Composable]]]:
        """The plan of every leaf and the group listings of the statements a full pass runs.

        Every statement reads the table itself, never a partition by name, so SELECT on the table is enough.
        """
        plans, statements = self._full_statements()
        return plans, [groups for groups, _ in statements]

    def _full_statements(self) -> tuple[list[tuple[int, LeafPlan]], list[tuple[list[sql.Composable], bytes]]]:
        """The plans, and each statement's group listings with its evaluated SQL, from the cache when it holds."""
        if self.plan_cache is None:
            catalog, rows = read_catalog(self.conn, self.spec)
            entry = None
        else:
            entry, rows = self.plan_cache.catalog(self.conn, self.spec)
            catalog = entry.catalog
        plans = plan_catalog(catalog, rows, self.spec)
        self._unsafe = frozenset(column for column, _ in catalog.unsafe)
        if any(plan.path == "row-by-row" for _, plan in plans):
            return plans, []  # _full_row_by_row: nothing grouped, nothing remembered
        self._list_values = {oid: plan.list_value for oid, plan in plans if plan.list_value is not None}
        self._bounds = {leaf.oid: leaf.bound for leaf in catalog.leaves}
        self._nullable = list(catalog.nullable)
        self._entry = entry
        self._known = self._known_values(entry, plans)
        plans = [(oid, self._known_plan(oid, plan)) for oid, plan in plans]
        learn = [oid for oid, plan in plans if self._server is not None and self._rememberable(plan)]
        # Statements depend on the plans' shapes, not on their row estimates (which move with every write).
        shape = digest(tuple((oid, p.path, p.list_value, p.index_columns, p.readable) for oid, p in plans))
        if entry is not None and entry.statements is not None and entry.statements[0] == shape:
            return plans, list(entry.statements[1])
        passes = self._build_passes(plans, list(catalog.nullable))
        # Each pass's listings are kept as one rendered SQL text, not as their composed tree: the tree of a
        # 100-partition table took ~100 KB in the cache (about 20 MB at 200 targets) for the rare fallback.
        statements: list[tuple[list[sql.Composable], bytes]] = [
            (
                [sql.SQL(sql.SQL(" UNION ALL ").join(groups).as_string(self.conn))],
                self._evaluated(groups, learn).as_bytes(self.conn),
            )
            for groups in passes
        ]
        if entry is not None:
            entry.statements = (shape, tuple(statements))
        return plans, statements

    def _build_passes(self, plans: list[tuple[int, LeafPlan]], nullable: list[str]) -> list[list[sql.Composable]]:
        """The group listings of each statement a full pass runs, for these plans."""
        loose: list[sql.Composable] = []
        groups: list[sql.Composable] = []
        handled: list[int] = []
        by_order: dict[tuple[str, ...], list[tuple[int, LeafPlan]]] = {}
        through_parent = self.conn.info.server_version >= 120000
        for oid, plan in plans:
            if plan.list_value is None:
                continue  # read by _other_groups
            handled.append(plan.list_value)
            if plan.path == "known-values":
                continue  # one aggregate of its own (_known_pass)
            if plan.path == "loose-index-scan":
                if through_parent:
                    by_order.setdefault(plan.index_columns, []).append((oid, plan))
                else:
                    loose.append(self._loose_scan(oid, plan))
                if nullable:
                    groups.append(self._fixed_key_groups(oid, plan, self._null_sources(nullable)))
            else:
                groups.append(self._fixed_key_groups(oid, plan))
        if len(handled) < len(plans):
            groups.append(self._other_groups(handled))
        # Partitions whose indexes order the source columns alike share one statement.
        loose += [self._loose_scan_through_parent(members) for members in by_order.values()]
        return [part for part in (loose, groups) if part]

    def explain_full(self) -> str:
        """EXPLAIN of every statement a full pass runs, so a fallback to a sequential scan can be seen."""
        plans, statements = self._full_statements()
        texts = [statement for _, statement in statements]
        if any(plan.path == "row-by-row" for _, plan in plans):
            texts.append(self._row_statement(self._whole_table(), sql.SQL("")).as_bytes(self.conn))
        known = [(oid, plan) for oid, plan in plans if plan.path == "known-values"]
        if known:
            texts.append(self._known_statement(known).as_bytes(self.conn))
        lines: list[str] = []
        for statement in texts:
            lines += [str(r[0]) for r in self.conn.execute(b"EXPLAIN " + statement).fetchall()]
        return "\n".join(lines)

    def _full(self, tally: _Tally) -> tuple[PartitionVerification, ...]:
        """Every leaf on its planned path; rows counted on the GROUP BY and known-values paths, from statistics on
        the loose one."""
        plans, statements = self._full_statements()
        if any(plan.path == "row-by-row" for _, plan in plans):
            return self._full_row_by_row(plans, tally)
        leaves = {oid: _Leaf(plan.relation, oid) for oid, plan in plans}
        loose = {oid for oid, plan in plans if plan.path == "loose-index-scan"}
        learn = [oid for oid, plan in plans if self._server is not None and self._rememberable(plan)]
        totals: dict[int, tuple[int, int]] = {}  # oid -> (rows counted, distinct groups)
        learned: dict[int, list[str] | None] = {}
        found: list[_Group] = []

        def handle(bad: list[_Group], counted: dict[int, tuple[int, int]]) -> None:
            found.extend(bad)
            for oid, (rows, count) in counted.items():
                old = totals.get(oid, (0, 0))
                totals[oid] = (old[0] + rows, old[1] + count)

        for groups, statement in statements:
            bad, counted, learnt = self._read(groups, statement, learn)
            learned.update(learnt or {})
            handle(bad, counted)
        known = [(oid, plan) for oid, plan in plans if plan.path == "known-values"]
        known_rows = self._known_pass(known, learned, handle) if known else {}
        # In one order whatever path found them (relation, key, source), so which groups get the examples and in what
        # order does not change from the first run (GROUP BY: hash order) to the next (known values: sorted).
        found.sort(key=lambda g: (leaves[g.oid].label, _sortable(g.stored), tuple(map(_sortable, g.text))))
        self._count_groups(found)
        for group in found:
            self._add(group, leaves[group.oid], group.oid in loose, tally, [])
        remembered = self._remember(plans, learned, found)
        out = []
        for oid, plan in plans:
            counted_rows, distinct = totals.get(oid, (0, 0))
            if oid in known_rows:
                # Distinct values: those remembered after this pass (some may no longer have rows), else new ones.
                rows, exact = known_rows[oid], True
                distinct = remembered.get(oid, distinct)
            elif oid not in loose:
                rows, exact = counted_rows, True
            elif self.exact_rows:
                rows, exact = self._count(oid, []), True
            else:
                rows, exact = max(plan.estimated_rows, 0), False
                tally.estimated += rows
            tally.checked += rows
            out.append(PartitionVerification(plan=plan, rows=rows, rows_exact=exact, distinct_values=distinct))
        return tuple(out)

    def _whole_table(self) -> sql.Composable:
        """The table as the row statements read it."""
        return sql.SQL("{} AS t").format(self.spec.table_ident)

    def _full_row_by_row(self, plans: list[tuple[int, LeafPlan]], tally: _Tally) -> tuple[PartitionVerification, ...]:
        """Every row's key evaluated alone, in one pass: exact whatever the source type's equality joins."""
        rows, bad = self._rows_evaluated(self._whole_table())
        per_leaf: dict[int, int] = {}
        for oid, count in [*rows, *((group.oid, group.rows or 0) for group in bad)]:
            per_leaf[oid] = per_leaf.get(oid, 0) + count
        tally.checked += sum(per_leaf.values())
        leaves = {oid: _Leaf(plan.relation, oid) for oid, plan in plans}
        bad.sort(key=lambda g: (leaves[g.oid].label, _sortable(g.stored), tuple(map(_sortable, g.text))))
        for group in bad:
            self._add(group, leaves[group.oid], False, tally, [])
        return tuple(
            PartitionVerification(plan=plan, rows=per_leaf.get(oid, 0), rows_exact=True, distinct_values=0)
            for oid, plan in plans
        )

    # --- known values: one aggregate per partition whose values an earlier pass saw ---------------------------

    def _remembers(self) -> bool:
        """Whether this verification may keep source values between passes (verify_known.py)."""
        return (
            self.plan_cache is not None
            and len(self.spec.source_columns) == 1
            and self.conn.info.server_version >= MIN_SERVER
        )

    @staticmethod
    def _rememberable(plan: LeafPlan) -> bool:
        """A single-value partition read by GROUP BY or by known values, without an index leading with the source
        columns: its good values stay good. (With such an index its GROUP BY is an index-only pass, which the
        known-values path, a sequential scan, was not measured against: it keeps that path.)"""
        return plan.list_value is not None and plan.path in ("group-by", "known-values") and plan.index is None

    def _known_values(self, entry: _Entry | None, plans: list[tuple[int, LeafPlan]]) -> KnownValues | None:
        """The values earlier passes remembered, when they are valid for this server run; sets self._server."""
        self._server = None
        self._leaves = {}
        if entry is None or not self._remembers() or not any(self._rememberable(p) for _, p in plans):
            return None
        self._server = server_run(self.conn)
        known = entry.known
        if known is not None and known.server != self._server:
            entry.known = known = None  # a restart, or another server at the same address
        self._leaves = known.unpack() if known is not None else {}
        return known

    def _known_plan(self, oid: int, plan: LeafPlan) -> LeafPlan:
        """The known-values path for a leaf whose values an earlier pass remembered under the same bound."""
        if self._known is None or not self._rememberable(plan):
            return plan
        leaf = self._leaves.get(oid)
        if leaf is None or leaf.bound != self._bounds.get(oid):
            return plan
        return replace(
            plan,
            path="known-values",
            # No per-leaf figures here: the report groups leaves by reason (distinct_values has the counts).
            reason=f"values an earlier pass found good or bad: one aggregate, only new values grouped ({plan.reason})",
        )

    def _known_array(self, leaf: KnownLeaf) -> sql.Composable:
        """A leaf's known values (good and bad) as one constant array of the source column's type."""
        assert self._known is not None
        texts = array_literal([*leaf.values, *(bad.text for bad in leaf.bad)])
        return sql.SQL("CAST({} AS {}[])").format(sql.Literal(texts), sql.SQL(self._known.column_type))

    def _unknown(self, leaf: KnownLeaf) -> sql.Composable:
        """Rows whose source value is not among the leaf's known values (NULL included)."""
        column = sql.Identifier(self.spec.source_columns[0])
        return sql.SQL("{col} IS NULL OR NOT ({col} = ANY({known}))").format(col=column, known=self._known_array(leaf))

    def _known_statement(self, plans: list[tuple[int, LeafPlan]]) -> sql.SQL:
        """One aggregate per leaf: rows, NULL sources, rows of no known value, rows of each known-bad value.

        `= ANY` over a constant array is a hash probe per row from PostgreSQL 14 (NOT wrapped around it, as
        `<> ALL` is hashed only from 15); a sequential scan with one plain Aggregate, no sort and no hash table of
        groups. Rendered as text from pieces rendered once: composing each leaf's pieces cost several ms a run.
        """
        assert self._known is not None
        conn = self.conn
        column = sql.Identifier(self.spec.source_columns[0]).as_string(conn)
        key = sql.Identifier(self.spec.key_column).as_string(conn)
        kind = self._known.column_type
        nulls = f"count(*) FILTER (WHERE {column} IS NULL)" if self.spec.source_columns[0] in self._nullable else "0"
        branches = []
        for oid, plan in plans:
            leaf = self._leaves[oid]
            bad = "'{}'::bigint[], '{}'::text[]"
            if leaf.bad:
                matches = [
                    f"{column} = CAST({sql.Literal(value.text).as_string(conn)} AS {kind})" for value in leaf.bad
                ]
                counts = ", ".join(f"count(*) FILTER (WHERE {match})" for match in matches)
                # One row of each bad value by its ctid, for the examples (min(tid) exists from PostgreSQL 14).
                ctids = ", ".join(f"(min(ctid) FILTER (WHERE {match}))::text" for match in matches)
                bad = f"ARRAY[{counts}]::bigint[], ARRAY[{ctids}]::text[]"
            where = "" if plan.readable else f" WHERE {key} = {int(plan.list_value or 0)}"
            branches.append(
                f"SELECT {int(oid)}::oid, count(*), {nulls}::bigint,"
                f" count(*) FILTER (WHERE NOT ({column} = ANY({self._known_array(leaf).as_string(conn)}))), {bad}"
                f" FROM {self._relation(plan).as_string(conn)}{where}"
            )
        return sql.SQL(" UNION ALL ".join(branches))

    def _known_pass(
        self,
        plans: list[tuple[int, LeafPlan]],
        learned: dict[int, list[str] | None],
        handle: Any,
    ) -> dict[int, int]:
        """The known-values leaves: one aggregate each; the rows of values not seen before grouped afterwards.

        Returns each leaf's exact row count; bad groups go to HANDLE, new good values into LEARNED.
        """
        assert self._known is not None
        by_oid = dict(plans)
        rows: dict[int, int] = {}
        bad: list[_Group] = []
        unseen: list[tuple[int, LeafPlan]] = []
        for oid, total, nulls, unknown, counts, ctids in self.conn.execute(self._known_statement(plans)).fetchall():
            plan = by_oid[int(oid)]
            leaf = self._leaves[int(oid)]
            rows[int(oid)] = int(total)
            for value, count, ctid in zip(leaf.bad, counts, ctids, strict=True):
                if count:
                    text = (value.text,)
                    group = _Group(int(oid), plan.list_value, text, text, int(count), value.raises, value.expected)
                    group.error, group.example = value.error, ctid
                    bad.append(group)
            if nulls or unknown:
                unseen.append((int(oid), plan))
        handle(bad, {})
        if unseen:
            groups: list[sql.Composable] = [
                self._fixed_key_groups(oid, plan, self._unknown(self._leaves[oid])) for oid, plan in unseen
            ]
            oids = [oid for oid, _ in unseen]
            new, counted, learnt = self._read(groups, self._evaluated(groups, oids).as_bytes(self.conn), oids)
            learned.update(learnt or {})
            # Their rows are in the aggregate's count already: only the groups are kept (distinct values).
            handle(new, {oid: (0, groups) for oid, (_, groups) in counted.items()})
        return rows

    def _remember(
        self, plans: list[tuple[int, LeafPlan]], learned: dict[int, list[str] | None], found: list[_Group]
    ) -> dict[int, int]:
        """Keep each single-value leaf's good and bad values for the next pass; returns how many each keeps."""
        if self._entry is None or self._server is None:
            return {}
        old = self._leaves
        bad: dict[int, list[KnownBad]] = {}
        for group in found:
            if group.text[0] is not None and group.stored is not None:
                bad.setdefault(group.oid, []).append(KnownBad(group.text[0], group.expected, group.raises, group.error))
        leaves: dict[int, KnownLeaf] = {}
        for oid, plan in plans:
            bound = self._bounds.get(oid)
            if bound is None or not self._rememberable(plan):
                continue
            good = learned.get(oid, [] if plan.path == "known-values" else None)
            if good is None:  # too many values, or an unpredicted error evaluated value by value
                continue
            if plan.path != "known-values":
                kept = KnownLeaf.make(bound, good, bad.get(oid, []))
            elif good or not set(bad.get(oid, [])) <= set(old[oid].bad):
                kept = old[oid].merged(good, bad.get(oid, []))
            else:
                kept = old[oid]  # nothing new (the usual run): not packed again
            if kept is not None:
                leaves[oid] = kept
        column_type = self._known.column_type if self._known is not None else None
        if leaves and column_type is None:
            column_type = self._source_types()[0]
        if not leaves:
            self._entry.known = None
        elif self._known is None or leaves.keys() != old.keys() or any(leaves[o] is not old[o] for o in leaves):
            self._entry.known = KnownValues.pack(self._server, column_type or "", leaves)
        return {oid: leaf.count + len(leaf.bad) for oid, leaf in leaves.items()}

    def _window(self, mode: Mode, sample_percent: float, filters: list[sql.Composable], tally: _Tally) -> None:
        """Sample or incremental: evaluate the formula per row (measured faster than grouping a window first).

        Good rows collapse into one group; bad rows are grouped by (relation, key, source) for the report.
        """
        source = self._whole_table()
        if mode == "sample":
            seed = int(time.time()) % 1_000_000
            source = sql.SQL("{} TABLESAMPLE SYSTEM ({}) REPEATABLE ({})").format(
                source, sql.Literal(sample_percent), sql.Literal(seed)
            )
        where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(filters) if filters else sql.SQL("")
        width = len(self.spec.source_columns)
        try:
            with self.conn.transaction():
                total, bad_rows = self._row_counts(source, where)
                # A clean window (the usual case) costs one aggregate; bad rows are then grouped for the report.
                rows = self.conn.execute(self._row_statement(source, where)).fetchall() if bad_rows else []
                if not bad_rows:
                    rows = [(None, True, *([None] * (2 * width + 1)), total, None, None)]
        except psycopg.DataError:
            bad, counted = self._read_value_by_value([self._window_groups(source, where)])
            good = sum(n for n, _ in counted.values()) - sum(g.rows or 0 for g in bad)
        else:
            good, bad = 0, []
            for row in rows:
                if row[1]:
                    good += int(row[3 + 2 * width])
                    continue
                bad.append(self._row_group(row))
        tally.checked += good + sum(g.rows or 0 for g in bad)
        if bad:  # names only when something needs reporting: a clean window costs one statement
            leaves = {oid: _Leaf(f"{s}.{n}", oid) for oid, (s, n) in self._leaf_names()}
            for group in bad:
                self._add(group, leaves[group.oid], False, tally, filters)

    def _rows_evaluated(self, source: sql.Composable) -> tuple[list[tuple[int, int]], list[_Group]]:
        """(leaf oid, good rows) and the bad groups of SOURCE, each row's key evaluated alone; on an unpredicted
        error, each distinct exact text evaluated alone."""
        width = len(self.spec.source_columns)
        # Rows and bad rows per leaf first: grouping every row's texts for the report cost ~4x more (1M numeric rows,
        # 100 partitions, PG 18, 2026-11-30: 694 against 162 ms), and a clean table (the usual case) needs the counts.
        try:
            with self.conn.transaction():
                per_leaf = self.conn.execute(self._counts_statement(source, sql.SQL(""), per_leaf=True)).fetchall()
                if not any(bad for _, _, bad in per_leaf):
                    return [(int(oid), int(total)) for oid, total, _ in per_leaf], []
                rows = self.conn.execute(self._row_statement(source, sql.SQL(""))).fetchall()
        except psycopg.DataError:
            bad, counted = self._read_value_by_value([self._window_groups(source, sql.SQL(""))])
            bad_rows: dict[int, int] = {}
            for group in bad:
                bad_rows[group.oid] = bad_rows.get(group.oid, 0) + (group.rows or 0)
            return [(oid, n - bad_rows.get(oid, 0)) for oid, (n, _) in counted.items()], bad
        good: list[tuple[int, int]] = []
        bad = []
        for row in rows:
            if row[1]:
                good.append((int(row[0]), int(row[3 + 2 * width])))
            else:
                bad.append(self._row_group(row))
        return good, bad

    def _row_group(self, row: Any) -> _Group:
        """One bad group of _row_statement's result."""
        width = len(self.spec.source_columns)
        return _Group(
            oid=int(row[0]),
            stored=row[2],
            text=tuple(row[3 : 3 + width]),
            native=tuple(row[3 + width : 3 + 2 * width]),
            rows=int(row[3 + 2 * width]),
            raises=bool(row[4 + 2 * width]),
            expected=row[5 + 2 * width],
        )

    def _window_groups(self, source: sql.Composable, where: sql.Composable) -> sql.Composed:
        """The rows of SOURCE grouped by leaf, key and source, for the value-by-value fallback.

        Unsafe source columns (verify_plan.SAFE_TYPES) are grouped by their exact text instead of their value, so
        that each group's value has the text of every row in it (1.0 and 1.00 are two groups), and a type with no
        equality (json, point) can be grouped at all.
        """
        unsafe = self._unsafe_columns()
        grouped = [
            _exact_text(sql.Identifier(c)) if c in unsafe else sql.Identifier(c) for c in self.spec.source_columns
        ]
        # Under the column's own name: _read_value_by_value reads the groups by column name.
        cols = sql.SQL(", ").join(
            sql.SQL("{} AS {}").format(expression, sql.Identifier(c))
            for expression, c in zip(grouped, self.spec.source_columns, strict=True)
        )
        return sql.SQL(
            "SELECT t.tableoid AS _pk_rel, {key}, {cols}, count(*) AS _pk_n FROM {src}{where}"
            " GROUP BY t.tableoid, {key}, {grouped}"
        ).format(
            key=sql.Identifier(self.spec.key_column),
            cols=cols,
            src=source,
            where=where,
            grouped=sql.SQL(", ").join(grouped),
        )

    def _unsafe_columns(self) -> frozenset[str]:
        """The source columns whose equality is coarser than their text (read from the catalog once)."""
        if self._unsafe is None:
            self._unsafe = frozenset(column for column, _ in unsafe_sources(self.conn, self.spec))
        return self._unsafe

    def _row_counts(self, source: sql.Composable, where: sql.Composable) -> tuple[int, int]:
        """Rows in the window, and how many of them are bad (error, NULL key or mismatch), in one cheap pass."""
        row = self.conn.execute(self._counts_statement(source, where, per_leaf=False)).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def _counts_statement(self, source: sql.Composable, where: sql.Composable, per_leaf: bool) -> sql.Composed:
        """Rows and bad rows (error, NULL key or mismatch) of SOURCE, each row's key evaluated, nothing grouped by
        value; with PER_LEAF one row per leaf (its oid first), else one row."""
        key = sql.Identifier(self.spec.key_column)
        return sql.SQL(
            "SELECT {rel}count(*), count(*) FILTER (WHERE _pk_raises OR {key} IS NULL"
            " OR {key} IS DISTINCT FROM _pk_expected) FROM (SELECT t.tableoid AS _pk_rel, {key},"
            " {raises} AS _pk_raises, CASE WHEN {raises} THEN NULL ELSE {expr} END AS _pk_expected FROM {src}{where})"
            " AS _pk_e{group}"
        ).format(
            rel=sql.SQL("_pk_rel, " if per_leaf else ""),
            key=key,
            raises=self._raises(),
            expr=self.spec.expression(),
            src=source,
            where=where,
            group=sql.SQL(" GROUP BY _pk_rel" if per_leaf else ""),
        )

    def _row_statement(self, source: sql.Composable, where: sql.Composable) -> sql.Composed:
        """Per-row evaluation: one good-rows count, and the bad rows grouped with their keys and sources."""
        key = sql.Identifier(self.spec.key_column)
        columns = [sql.Identifier(c) for c in self.spec.source_columns]

        def bad_only(value: sql.Composable) -> sql.Composable:
            return sql.SQL("CASE WHEN _pk_b THEN {} END").format(value)

        unsafe = self._unsafe_columns()
        # An unsafe column's value is grouped by its text alone: json and point have no equality to group by, and
        # its rows are selected by that text (_conditions), so the value itself is never needed.
        natives = [
            _exact_text(column) if name in unsafe else column
            for name, column in zip(self.spec.source_columns, columns, strict=True)
        ]
        width = len(columns)
        positions = [*range(1, 4 + 2 * width), 5 + 2 * width, 6 + 2 * width]
        return sql.SQL(
            "SELECT {rel}, NOT _pk_b, {key_out}, {texts}, {natives}, count(*), {raised}, {expected} FROM ("
            "SELECT _pk_e.*, (_pk_raises OR {key} IS NULL OR {key} IS DISTINCT FROM _pk_expected) AS _pk_b FROM ("
            "SELECT t.tableoid AS _pk_rel, {key}, {cols}, {raises} AS _pk_raises,"
            " CASE WHEN {raises} THEN NULL ELSE {expr} END AS _pk_expected FROM {src}{where}) AS _pk_e) AS _pk_x"
            " GROUP BY {positions}"
        ).format(
            # Good rows collapse into one group per leaf (the full row-by-row pass counts each leaf's rows).
            rel=sql.SQL("_pk_rel"),
            key_out=bad_only(key),
            # Grouped by the exact text: under a nondeterministic collation 'a' and 'A' are two bad groups.
            texts=sql.SQL(", ").join(bad_only(_exact_text(c)) for c in columns),
            natives=sql.SQL(", ").join(bad_only(c) for c in natives),
            raised=bad_only(sql.SQL("_pk_raises")),
            expected=bad_only(sql.SQL("_pk_expected")),
            key=key,
            cols=self._columns(),
            raises=self._raises(),
            expr=self.spec.expression(),
            src=source,
            where=where,
            positions=sql.SQL(", ").join(sql.Literal(p) for p in positions),
        )

    def _read(
        self, groups: list[sql.Composable], statement: bytes, learn: list[int] | None = None
    ) -> tuple[list[_Group], dict[int, tuple[int, int]], dict[int, list[str] | None] | None]:
        """The bad groups of one statement, (rows, groups) per relation, and the good values of the relations in
        LEARN (None where there were too many); on an unpredicted error, evaluated per value and nothing learned."""
        try:
            with self.conn.transaction():
                rows = self.conn.execute(statement).fetchall()
        except psycopg.DataError as error:
            log.warning(
                "verification of %s: an expression error no rule predicted (%s); evaluating each distinct value alone",
                self.spec.label,
                str(error).strip(),
            )
            return (*self._read_value_by_value(groups), None)
        width = len(self.spec.source_columns)
        bad = []
        totals: dict[int, tuple[int, int]] = {}
        # A leaf with no rows has no total row: nothing to remember but that it is empty.
        learned: dict[int, list[str] | None] = {oid: [] for oid in learn or ()}
        for row in rows:
            oid, total, stored, rest = int(row[0]), row[1], row[2], row[3:]
            if total:
                totals[oid] = (int(rest[2 * width] or 0), int(rest[2 * width + 3] or 0))
                if oid in learned:
                    good = rest[2 * width + 4]
                    learned[oid] = None if good is None else [str(value) for value in good]
                continue
            count = rest[2 * width]
            bad.append(
                _Group(
                    oid=oid,
                    stored=stored,
                    text=tuple(rest[:width]),
                    native=tuple(rest[width : 2 * width]),
                    rows=None if count is None else int(count),
                    raises=bool(rest[2 * width + 1]),
                    expected=rest[2 * width + 2],
                )
            )
        return bad, totals, learned

    def _read_value_by_value(self, groups: list[sql.Composable]) -> tuple[list[_Group], dict[int, tuple[int, int]]]:
        """Fallback: list the groups without the expression, then evaluate each distinct source tuple alone."""
        width = len(self.spec.source_columns)
        types = self._source_types()
        texts = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in self.spec.source_columns)
        listing = sql.SQL("WITH _pk_g AS ({groups}) SELECT _pk_rel, {key}, {texts}, {cols}, _pk_n FROM _pk_g").format(
            groups=sql.SQL(" UNION ALL ").join(groups),
            key=sql.Identifier(self.spec.key_column),
            texts=texts,
            cols=self._columns(),
        )
        cache: dict[tuple[str | None, ...], tuple[str | None, int | None]] = {}
        bad = []
        totals: dict[int, tuple[int, int]] = {}
        for row in self.conn.execute(listing).fetchall():
            oid, stored = int(row[0]), row[1]
            text = tuple(row[2 : 2 + width])
            count = row[2 + 2 * width]
            if text not in cache:
                try:
                    with self.conn.transaction():
                        value = self.conn.execute(self._probe(text, types)).fetchone()
                    cache[text] = (None, None if value is None else value[0])
                except psycopg.DataError as error:
                    cache[text] = (str(error).strip(), None)
            message, expected = cache[text]
            raises = message is not None
            counted_rows, counted_groups = totals.get(oid, (0, 0))
            totals[oid] = (counted_rows + int(count or 0), counted_groups + 1)
            if raises or stored is None or stored != expected:
                rows = None if count is None else int(count)
                native = tuple(row[2 + width : 2 + 2 * width])
                bad.append(_Group(oid, stored, text, native, rows, raises, expected, message))
        return bad, totals

    def _probe(self, text: tuple[str | None, ...], types: list[str]) -> sql.Composed:
        """The key expression over one source tuple, each value cast back from its text."""
        casts = sql.SQL(", ").join(
            sql.SQL("CAST({} AS {}) AS {}").format(sql.Literal(value), sql.SQL(kind), sql.Identifier(column))
            for value, kind, column in zip(text, types, self.spec.source_columns, strict=True)
        )
        return sql.SQL("SELECT {} FROM (SELECT {}) AS _pk_v").format(self.spec.expression(), casts)

    def _source_types(self) -> list[str]:
        """The SQL type of each source column, to cast a value's text back exactly."""
        rows = self.conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a"
            " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped",
            (self.spec.table_ident.as_string(self.conn),),
        ).fetchall()
        types = {str(name): str(kind) for name, kind in rows}
        return [types[c] for c in self.spec.source_columns]

    # --- bad groups: counts and examples ----------------------------------------------------------------------

    def _conditions(self, group: _Group) -> list[sql.Composable]:
        """WHERE conditions selecting exactly a group's rows (index-friendly: = or IS NULL per column)."""
        out: list[sql.Composable] = []
        columns = (self.spec.key_column, *self.spec.source_columns)
        texts = (None, *group.text)
        unsafe = self._unsafe_columns()
        for column, value, text in zip(columns, (group.stored, *group.native), texts, strict=True):
            if value is None:
                out.append(sql.SQL("{} IS NULL").format(sql.Identifier(column)))
            elif column in unsafe and column != self.spec.key_column:
                # `= 1.0` also selects 1.00, whose key may differ: select by the exact text.
                out.append(sql.SQL("{} = {}").format(_exact_text(sql.Identifier(column)), sql.Literal(text)))
            else:
                out.append(sql.SQL("{} = {}").format(sql.Identifier(column), sql.Literal(value)))
        return out

    def _leaf_rows(self, oid: int, conditions: list[sql.Composable]) -> sql.Composable:
        """FROM and WHERE for one leaf's rows matching the conditions, read through the table (the key and source
        conditions prune to the leaf and use its index; tableoid keeps the count to that leaf)."""
        where = [sql.SQL("tableoid = {}::oid").format(sql.Literal(oid)), *conditions]
        return sql.SQL("FROM {} WHERE {}").format(self.spec.table_ident, sql.SQL(" AND ").join(where))

    def _count(self, oid: int, conditions: list[sql.Composable]) -> int:
        """Rows of one leaf matching the conditions (an index scan when an index leads with them)."""
        if not conditions:  # a whole single-value partition: prune by its key
            plan_value = self._list_values.get(oid)
            if plan_value is not None:
                conditions = [sql.SQL("{} = {}").format(sql.Identifier(self.spec.key_column), sql.Literal(plan_value))]
        row = self.conn.execute(sql.SQL("SELECT count(*) {}").format(self._leaf_rows(oid, conditions))).fetchone()
        return int(row[0]) if row else 0

    def _count_groups(self, groups: list[_Group]) -> None:
        """Count the rows of the groups the loose scan listed without counts, many groups per statement.

        One statement per group cost a round trip each (a moved collection can leave hundreds of bad groups);
        each branch still prunes to its leaf by key value and counts with the leaf's index.
        """
        missing = [group for group in groups if group.rows is None]
        for start in range(0, len(missing), COUNT_BATCH):
            batch = missing[start : start + COUNT_BATCH]
            branches = sql.SQL(" UNION ALL ").join(
                sql.SQL("SELECT {}, count(*) {}").format(
                    sql.Literal(number), self._leaf_rows(group.oid, self._conditions(group))
                )
                for number, group in enumerate(batch)
            )
            for number, count in self.conn.execute(branches).fetchall():
                batch[int(number)].rows = int(count)

    def _add(self, group: _Group, leaf: _Leaf, loose: bool, tally: _Tally, filters: list[sql.Composable]) -> None:
        """Count one bad group (its rows from the index when the loose scan listed it), and fetch examples."""
        rows = group.rows
        if rows is None:
            rows = self._count(leaf.oid, self._conditions(group) + filters)
        kind: BadKind = "error" if group.raises else "null" if group.stored is None else "mismatch"
        if kind == "error":
            tally.errors += rows
        elif kind == "null":
            tally.null_keys += rows
        else:
            tally.mismatched += rows
        tally.pairs_total += 1
        if len(tally.pairs) < self.pairs_limit:
            tally.pairs.append(BadPair(kind, leaf.label, group.stored, group.text, group.expected, rows))
        if len(tally.examples) < self.examples_limit:
            self._examples(group, kind, leaf, tally, filters)

    def _pk_columns(self) -> sql.Composable:
        """The primary key columns, or ctid when the table has none."""
        if not self.primary_key:
            return sql.SQL("ctid::text AS ctid")
        return sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in self.primary_key)

    def _pk_names(self) -> tuple[str, ...]:
        """Names matching _pk_columns."""
        return self.primary_key or ("ctid",)

    def _examples(
        self, group: _Group, kind: BadKind, leaf: _Leaf, tally: _Tally, filters: list[sql.Composable]
    ) -> None:
        """Fetch a few of a bad group's rows by their primary keys.

        Without an index the fetch is a scan of the leaf that stops at its LIMIT: asking for no more rows than the
        group has stops it at the group's last row, and one row whose ctid the counting pass read is fetched by it
        (a TID scan; at 10M rows the 7 planted stale rows' scans took ~0.1x count(*) a run).
        """
        wanted = self.examples_limit - len(tally.examples)
        if group.rows is not None:
            wanted = min(wanted, group.rows)
        conditions = self._conditions(group) + filters
        rows: list[Any] = []
        if group.example is not None and wanted == 1:
            by_ctid = [*conditions, sql.SQL("ctid = {}::tid").format(sql.Literal(group.example))]
            query = sql.SQL("SELECT {} {}").format(self._pk_columns(), self._leaf_rows(leaf.oid, by_ctid))
            rows = self.conn.execute(query).fetchall()  # none when the row moved since: then scanned for
        if not rows:
            query = sql.SQL("SELECT {pk} {rows} LIMIT {limit}").format(
                pk=self._pk_columns(), rows=self._leaf_rows(leaf.oid, conditions), limit=sql.Literal(wanted)
            )
            rows = self.conn.execute(query).fetchall()
        names = self._pk_names()
        error = None
        if kind == "error":
            # Predicted errors never ran: name what the server would have said.
            error = group.error or "integer out of range: hashtext() is INT_MIN, so abs() overflows"
        for row in rows:
            tally.examples.append(
                BadRow(
                    kind=kind,
                    relation=leaf.label,
                    primary_key=dict(zip(names, (str(v) for v in row), strict=True)),
                    stored_key=group.stored,
                    expected_key=group.expected,
                    error=error,
                )
            )


def _exact_text(column: sql.Composable) -> sql.Composed:
    """A column's text, compared bytewise: the form the key is computed from (1.0 and 1.00 differ, 'a' and 'A')."""
    return sql.SQL('({}::text) COLLATE "C"').format(column)


def current_watermark(conn: psycopg.Connection[Any], spec: KeySpec, column: str) -> Any:
    """The newest value of the watermark column, or None for an empty table."""
    row = conn.execute(sql.SQL("SELECT max({}) FROM {}").format(sql.Identifier(column), spec.table_ident)).fetchone()
    return row[0] if row else None

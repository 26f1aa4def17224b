"""Count rows whose partition key differs from the key expression (shared by the exporter and migrations)."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import psycopg
from psycopg import sql

from exporter.keyspec import KeySpec

log = logging.getLogger(__name__)

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

    @property
    def correct(self) -> int:
        """Rows whose key matched the expression."""
        return self.rows_checked - self.mismatched - self.null_keys - self.expression_errors

    @property
    def clean(self) -> bool:
        """True when no bad row of any kind was found."""
        return self.mismatched == 0 and self.null_keys == 0 and self.expression_errors == 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        data = asdict(self)
        data["correct"] = self.correct
        data["watermark"] = None if self.watermark is None else str(self.watermark)
        return data


@dataclass
class _Tally:
    """Mutable counts while one pass walks the relations."""

    checked: int = 0
    mismatched: int = 0
    null_keys: int = 0
    errors: int = 0
    examples: list[BadRow] = field(default_factory=list)


class Verifier:
    """Runs one verification pass over a table's leaf relations, surviving rows whose expression errors."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        spec: KeySpec,
        *,
        primary_key: tuple[str, ...] = (),
        examples_limit: int = 10,
    ) -> None:
        self.conn = conn
        self.spec = spec
        self.primary_key = primary_key
        self.examples_limit = examples_limit

    def relations(self) -> list[tuple[str, str]]:
        """(schema, name) of every leaf relation that holds rows: the partitions, or the table itself."""
        rows = self.conn.execute(
            """WITH RECURSIVE tree(relid) AS (
                   SELECT %(oid)s::regclass::oid
                   UNION ALL
                   SELECT i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.relid)
               SELECT n.nspname, c.relname FROM tree
               JOIN pg_class c ON c.oid = tree.relid JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relkind = 'r' ORDER BY c.relname""",
            {"oid": self.spec.table_ident.as_string(self.conn)},
        ).fetchall()
        return [(row[0], row[1]) for row in rows]

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
        seed = int(time.time()) % 1_000_000
        filters = self._filters(mode, watermark_column, after, upto)

        def source(relation: sql.Identifier, only: bool) -> sql.Composable:
            prefix = sql.SQL("ONLY {} AS t").format(relation) if only else sql.SQL("{} AS t").format(relation)
            if mode != "sample":
                return prefix
            return sql.SQL("{} TABLESAMPLE SYSTEM ({}) REPEATABLE ({})").format(
                prefix, sql.Literal(sample_percent), sql.Literal(seed)
            )

        tally = _Tally()
        # One statement over the whole table lets the planner prune, scan in parallel and skip per-partition
        # round trips; only when a row's expression raises do we fall back to bisecting each partition.
        if not self._scan_whole_table(source(self.spec.table_ident, only=False), filters, tally):
            tally = _Tally()
            for schema, name in self.relations():
                relation = sql.Identifier(schema, name)
                label = f"{schema}.{name}"
                self._scan(label, relation, source(relation, only=True), filters, 0, self._block_count(relation), tally)
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

    def _count_query(self, source: sql.Composable, where: sql.Composable) -> sql.Composed:
        """Rows checked, NULL keys and mismatched keys in one pass."""
        key = sql.Identifier(self.spec.key_column)
        return sql.SQL(
            "SELECT count(*), count(*) FILTER (WHERE {key} IS NULL),"
            " count(*) FILTER (WHERE {key} IS NOT NULL AND {key} IS DISTINCT FROM {expr}) FROM {src}{where}"
        ).format(key=key, expr=self.spec.expression(), src=source, where=where)

    def _scan_whole_table(self, source: sql.Composable, filters: list[sql.Composable], tally: _Tally) -> bool:
        """Count over the whole table at once; False when some row's expression raises."""
        return self._count_into(source, self._where(filters, 0, 0, whole=True), tally) is None

    def _count_into(self, source: sql.Composable, where: sql.Composable, tally: _Tally) -> psycopg.DataError | None:
        """Add one range's counts and examples to the tally; return the error instead when an expression raises."""
        try:
            with self.conn.transaction():
                row = self.conn.execute(self._count_query(source, where)).fetchone()
        except psycopg.DataError as error:
            return error
        assert row is not None
        self._add_counts(row, tally)
        if (row[1] or row[2]) and len(tally.examples) < self.examples_limit:
            self._collect_examples(source, where, tally)
        return None

    @staticmethod
    def _add_counts(row: tuple[Any, ...], tally: _Tally) -> None:
        """Add one count row to the tally."""
        tally.checked += int(row[0])
        tally.null_keys += int(row[1])
        tally.mismatched += int(row[2])

    def _block_count(self, relation: sql.Identifier) -> int:
        """Pages in the relation, the unit the bisection splits on."""
        row = self.conn.execute(
            sql.SQL("SELECT pg_relation_size({}) / current_setting('block_size')::bigint").format(
                sql.Literal(relation.as_string(self.conn))
            )
        ).fetchone()
        return int(row[0]) if row else 0

    def _where(self, filters: list[sql.Composable], first: int, last: int, whole: bool) -> sql.Composable:
        """WHERE clause for the user's filters plus a ctid block range when bisecting."""
        clauses = list(filters)
        if not whole:
            clauses.append(
                sql.SQL("ctid >= {}::tid AND ctid < {}::tid").format(
                    sql.Literal(f"({first},0)"), sql.Literal(f"({last},0)")
                )
            )
        if not clauses:
            return sql.SQL("")
        return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(clauses)

    def _scan(
        self,
        label: str,
        relation: sql.Identifier,
        source: sql.Composable,
        filters: list[sql.Composable],
        first: int,
        last: int,
        tally: _Tally,
        whole: bool = True,
    ) -> None:
        """Count bad rows in blocks [first, last); on an expression error, split the range and retry."""
        error = self._count_into(source, self._where(filters, first, last, whole), tally)
        if error is not None:
            self._bisect(label, relation, source, filters, first, last, tally, error)

    def _bisect(
        self,
        label: str,
        relation: sql.Identifier,
        source: sql.Composable,
        filters: list[sql.Composable],
        first: int,
        last: int,
        tally: _Tally,
        error: psycopg.Error,
    ) -> None:
        """Narrow an erroring range down to single blocks, then to the rows that raise."""
        if last - first > 1:
            middle = (first + last) // 2
            self._scan(label, relation, source, filters, first, middle, tally, whole=False)
            self._scan(label, relation, source, filters, middle, last, tally, whole=False)
            return
        if last <= first:
            # The relation grew after its size was read: rows past the end cannot be split by block.
            log.warning("verification of %s: expression error outside known blocks: %s", label, error)
            tally.errors += 1
            return
        self._scan_rows_one_by_one(label, source, filters, first, tally)

    def _scan_rows_one_by_one(
        self, label: str, source: sql.Composable, filters: list[sql.Composable], block: int, tally: _Tally
    ) -> None:
        """Evaluate each row of one block alone, so only the rows that raise count as errors."""
        key = sql.Identifier(self.spec.key_column)
        where = self._where(filters, block, block + 1, whole=False)
        ctids = [r[0] for r in self.conn.execute(sql.SQL("SELECT ctid FROM {}{}").format(source, where))]
        for ctid in ctids:
            probe = sql.SQL("SELECT {key}, {expr} FROM {src} WHERE ctid = {ctid}::tid").format(
                key=key, expr=self.spec.expression(), src=source, ctid=sql.Literal(str(ctid))
            )
            try:
                with self.conn.transaction():
                    row = self.conn.execute(probe).fetchone()
            except psycopg.DataError as error:
                tally.checked += 1
                tally.errors += 1
                self._add_example(label, source, str(ctid), "error", None, None, str(error).strip(), tally)
                continue
            if row is None:
                continue
            tally.checked += 1
            stored, expected = row
            if stored is None:
                tally.null_keys += 1
                self._add_example(label, source, str(ctid), "null", None, expected, None, tally)
            elif stored != expected:
                tally.mismatched += 1
                self._add_example(label, source, str(ctid), "mismatch", stored, expected, None, tally)

    def _pk_columns(self) -> sql.Composable:
        """The primary key columns, or ctid when the table has none."""
        if not self.primary_key:
            return sql.SQL("ctid::text AS ctid")
        return sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in self.primary_key)

    def _pk_names(self) -> tuple[str, ...]:
        """Names matching _pk_columns."""
        return self.primary_key or ("ctid",)

    def _collect_examples(self, source: sql.Composable, where: sql.Composable, tally: _Tally) -> None:
        """Fetch a few bad rows' primary keys and partitions; skip quietly if the expression errors here."""
        key = sql.Identifier(self.spec.key_column)
        bad = sql.SQL("({key} IS NULL OR {key} IS DISTINCT FROM {expr})").format(key=key, expr=self.spec.expression())
        condition = sql.SQL(" WHERE ") + bad if where.as_string(self.conn) == "" else where + sql.SQL(" AND ") + bad
        query = sql.SQL(
            "SELECT (SELECT n.nspname || '.' || c.relname FROM pg_catalog.pg_class c"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = t.tableoid),"
            " {pk}, {key}, {expr} FROM {src}{cond} LIMIT {limit}"
        ).format(
            pk=self._pk_columns(),
            key=key,
            expr=self.spec.expression(),
            src=source,
            cond=condition,
            limit=sql.Literal(self.examples_limit - len(tally.examples)),
        )
        try:
            with self.conn.transaction():
                rows = self.conn.execute(query).fetchall()
        except psycopg.DataError:
            return
        names = self._pk_names()
        for row in rows:
            stored, expected = row[len(names) + 1], row[len(names) + 2]
            tally.examples.append(
                BadRow(
                    kind="null" if stored is None else "mismatch",
                    relation=str(row[0]),
                    primary_key=dict(zip(names, (str(v) for v in row[1 : len(names) + 1]), strict=True)),
                    stored_key=stored,
                    expected_key=expected,
                )
            )

    def _add_example(
        self,
        label: str,
        source: sql.Composable,
        ctid: str,
        kind: BadKind,
        stored: int | None,
        expected: int | None,
        error: str | None,
        tally: _Tally,
    ) -> None:
        """Record one bad row found during the row-by-row pass."""
        if len(tally.examples) >= self.examples_limit:
            return
        row = self.conn.execute(
            sql.SQL("SELECT {} FROM {} WHERE ctid = {}::tid").format(self._pk_columns(), source, sql.Literal(ctid))
        ).fetchone()
        values = tuple(str(v) for v in row) if row else (ctid,)
        tally.examples.append(
            BadRow(
                kind=kind,
                relation=label,
                primary_key=dict(zip(self._pk_names(), values, strict=False)),
                stored_key=stored,
                expected_key=expected,
                error=error,
            )
        )


def current_watermark(conn: psycopg.Connection[Any], spec: KeySpec, column: str) -> Any:
    """The newest value of the watermark column, or None for an empty table."""
    row = conn.execute(sql.SQL("SELECT max({}) FROM {}").format(sql.Identifier(column), spec.table_ident)).fetchone()
    return row[0] if row else None

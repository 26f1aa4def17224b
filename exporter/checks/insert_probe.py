"""Check 4: INSERT latency of a synthetic row, always rolled back, so nothing is ever left behind."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from exporter.checks.base import CheckFailedError, Outcome
from exporter.config import TableConfig
from exporter.formula_catalog import resolve_spec

_COLUMN_SQL = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), {generated}
FROM pg_attribute a
WHERE a.attrelid = {table}::regclass AND a.attnum > 0 AND NOT a.attisdropped
"""


@dataclass(frozen=True)
class ProbeResult:
    """Latencies of the probe's inserts in seconds."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        """The median latency."""
        ordered = sorted(self.samples)
        middle = len(ordered) // 2
        return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


class InsertProbeError(CheckFailedError):
    """The probe's INSERT failed: the server's SQLSTATE, message and DETAIL, as the application would see them."""


def describe_insert_error(error: psycopg.DatabaseError) -> str:
    """'INSERT failed: SQLSTATE 55000: moving row to another partition ... (DETAIL: ...)'."""
    diag = error.diag
    message = diag.message_primary or str(error).strip().splitlines()[0]
    text = f"INSERT failed: SQLSTATE {error.sqlstate or 'unknown'}: {message}"
    return text + (f" (DETAIL: {diag.message_detail})" if diag.message_detail else "")


class InsertProbeCheck:
    """Needs INSERT privilege; the runner opens a READ WRITE transaction and always rolls it back."""

    name = "insert_probe"
    read_write = True
    one_snapshot = False

    def __init__(self, table: TableConfig) -> None:
        self.table = table

    def _statement(self, conn: psycopg.Connection[Any]) -> sql.Composed:
        """INSERT of one row with the configured values and the key the table's own formula gives them."""
        spec = resolve_spec(conn, self.table.spec)  # key_expression: auto keys the probe by the table's formula
        settings = self.table.checks.insert_probe
        generated = "a.attgenerated <> ''" if conn.info.server_version >= 120000 else "false"
        table = sql.Literal(spec.table_ident.as_string(conn))
        query = sql.SQL(_COLUMN_SQL).format(generated=sql.SQL(generated), table=table)
        columns = {name: (type_name, is_generated) for name, type_name, is_generated in conn.execute(query).fetchall()}
        for column in settings.extra_values:
            if column not in columns:
                raise ValueError(f"insert_probe.extra_values: {self.table.label} has no column {column!r}")
        given = {spec.source_column: settings.source_value, **settings.extra_values}

        def typed(column: str) -> sql.Composable:
            value = sql.Literal(given[column]) if column in given else sql.NULL
            return sql.SQL("{}::{}").format(value, sql.SQL(columns[column][0]))

        # The row's values in a subquery, so the key expression reads them by column name (composite keys too);
        # a source column without a value is NULL there and left to its default in the INSERT.
        known = [c for c in dict.fromkeys([*given, *spec.source_columns]) if c in columns]
        row = sql.SQL(", ").join(sql.SQL("{} AS {}").format(typed(c), sql.Identifier(c)) for c in known)
        names: list[sql.Composable] = [sql.Identifier(c) for c in given]
        values: list[sql.Composable] = [sql.Identifier(c) for c in given]
        key = columns.get(spec.key_column)
        if key is not None and not key[1]:
            names.append(sql.Identifier(spec.key_column))
            values.append(spec.expression())
        return sql.SQL("INSERT INTO {} ({}) SELECT {} FROM (SELECT {}) AS probe").format(
            spec.table_ident, sql.SQL(", ").join(names), sql.SQL(", ").join(values), row
        )

    def run(self, conn: psycopg.Connection[Any]) -> Outcome:
        """Time each INSERT inside a savepoint that is rolled back straight away."""
        statement = self._statement(conn)
        latencies: list[float] = []
        for _ in range(self.table.checks.insert_probe.samples):
            with conn.transaction() as savepoint:
                started = time.perf_counter()
                try:
                    conn.execute(statement)
                except psycopg.DatabaseError as error:
                    if error.sqlstate == "42501":
                        raise  # the runner names a missing privilege as such
                    raise InsertProbeError(describe_insert_error(error)) from None
                latencies.append(time.perf_counter() - started)
                raise psycopg.Rollback(savepoint)
        return Outcome(payload=ProbeResult(samples=tuple(latencies)), probe=(latencies, 0))

"""Check 4: INSERT latency of a synthetic row, always rolled back, so nothing is ever left behind."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from exporter.checks.base import Outcome
from exporter.config import TableConfig
from exporter.keyspec import key_expression

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


class InsertProbeCheck:
    """Needs INSERT privilege; the runner opens a READ WRITE transaction and always rolls it back."""

    name = "insert_probe"
    read_write = True

    def __init__(self, table: TableConfig) -> None:
        self.table = table

    def _statement(self, conn: psycopg.Connection[Any]) -> sql.Composed:
        """INSERT of one row with the configured source value and the key the table expects."""
        spec = self.table.spec
        settings = self.table.checks.insert_probe
        generated = "a.attgenerated <> ''" if conn.info.server_version >= 120000 else "false"
        table = sql.Literal(spec.table_ident.as_string(conn))
        query = sql.SQL(_COLUMN_SQL).format(generated=sql.SQL(generated), table=table)
        columns = {name: (type_name, is_generated) for name, type_name, is_generated in conn.execute(query).fetchall()}
        source_type = columns[spec.source_column][0]
        names: list[sql.Composable] = [sql.Identifier(spec.source_column)]
        values: list[sql.Composable] = [
            sql.SQL("{}::{}").format(sql.Literal(settings.source_value), sql.SQL(source_type))
        ]
        key = columns.get(spec.key_column)
        if key is not None and not key[1]:
            names.append(sql.Identifier(spec.key_column))
            source_value = sql.SQL("{}::{}").format(sql.Literal(settings.source_value), sql.SQL(source_type))
            values.append(key_expression(source_value, spec.modulus, spec.formula))
        for column, value in settings.extra_values.items():
            if column not in columns:
                raise ValueError(f"insert_probe.extra_values: {self.table.label} has no column {column!r}")
            names.append(sql.Identifier(column))
            values.append(sql.SQL("{}::{}").format(sql.Literal(value), sql.SQL(columns[column][0])))
        return sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            spec.table_ident, sql.SQL(", ").join(names), sql.SQL(", ").join(values)
        )

    def run(self, conn: psycopg.Connection[Any]) -> Outcome:
        """Time each INSERT inside a savepoint that is rolled back straight away."""
        statement = self._statement(conn)
        latencies: list[float] = []
        for _ in range(self.table.checks.insert_probe.samples):
            with conn.transaction() as savepoint:
                started = time.perf_counter()
                conn.execute(statement)
                latencies.append(time.perf_counter() - started)
                raise psycopg.Rollback(savepoint)
        return Outcome(payload=ProbeResult(samples=tuple(latencies)), probe=(latencies, 0))

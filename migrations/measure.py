"""--measure: INSERT latency with the current and the target implementation, side by side, in one run.

Both variants are scratch copies of the table built inside one transaction that is rolled back, so the real
table only sees a brief ACCESS SHARE lock (to copy its definition and a sample of its rows).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from exporter.introspect import Implementation
from migrations import sqlgen
from migrations.catalog import key_triggers
from migrations.options import Options
from migrations.retry import apply_timeouts

SCRATCH = "partkey_measure"


@dataclass
class MeasureReport:
    """Medians per variant, in microseconds per row, and how they were taken."""

    table: str
    before: str
    after: str
    rows: int = 0
    rounds: int = 0
    single_before: list[float] = field(default_factory=list)
    single_after: list[float] = field(default_factory=list)
    bulk_before: list[float] = field(default_factory=list)
    bulk_after: list[float] = field(default_factory=list)
    note: str | None = None

    def medians(self) -> dict[str, float]:
        """Median single-row latency and bulk per-row cost of each variant (µs)."""
        return {
            "single_before": statistics.median(self.single_before),
            "single_after": statistics.median(self.single_after),
            "bulk_before": statistics.median(self.bulk_before),
            "bulk_after": statistics.median(self.bulk_after),
        }

    def lines(self) -> list[str]:
        """The side-by-side table the CLI prints."""
        if self.note is not None:
            return [f"measure: {self.note}; nothing was measured"]
        m = self.medians()
        width = max(len(self.before), len(self.after), 12) + 9
        return [
            f"measure: INSERT latency on scratch copies of {self.table} in one rolled-back transaction; "
            f"{self.rows} sampled rows x {self.rounds} rounds, variants alternated",
            f"  {'variant':<{width}} {'single-row INSERT, median µs':>30} {'INSERT…SELECT, median µs/row':>30}",
            f"  {'before: ' + self.before:<{width}} {m['single_before']:>30.1f} {m['bulk_before']:>30.2f}",
            f"  {'after: ' + self.after:<{width}} {m['single_after']:>30.1f} {m['bulk_after']:>30.2f}",
            f"  {'after/before':<{width}} {m['single_after'] / m['single_before']:>30.2f} "
            f"{m['bulk_after'] / m['bulk_before']:>30.2f}",
            "  single-row numbers include the client round trip; nothing is committed, so no commit cost either",
        ]


def _columns(conn: psycopg.Connection[Any], impl: Implementation, options: Options) -> list[str]:
    """Columns an application INSERT names: not generated, nor a plain table's key (the trigger sets it)."""
    generated = "attgenerated = ''" if impl.major >= 12 else "true"
    rows = conn.execute(
        sql.SQL(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
            "AND NOT attisdropped AND {} ORDER BY attnum"
        ).format(sql.SQL(generated)),
        (options.spec.table_ident.as_string(conn),),
    ).fetchall()
    names = [str(r[0]) for r in rows]
    if impl.shape == "plain":
        names = [n for n in names if n not in (options.spec.key_column, options.new_column)]
    return names


def _scratch(conn: psycopg.Connection[Any], impl: Implementation, options: Options, name: str) -> None:
    """A copy of the table's columns (and partitions, one per key), with its PK, and no trigger or CHECK."""
    spec = options.spec
    target = sql.Identifier(spec.schema, name)
    partitioned = impl.shape == "list"
    conn.execute(
        sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS){}").format(
            target,
            spec.table_ident,
            sql.SQL(" PARTITION BY LIST ({})").format(sql.Identifier(spec.key_column)) if partitioned else sql.SQL(""),
        )
    )
    if partitioned:
        for key in range(spec.modulus):
            conn.execute(
                sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES IN ({})").format(
                    sql.Identifier(spec.schema, f"{name}_p{key}"), target, sql.Literal(key)
                )
            )


def _add_pk(conn: psycopg.Connection[Any], impl: Implementation, options: Options, name: str) -> None:
    """The original table's PK columns, so index maintenance costs the same."""
    if impl.primary_key:
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(
                sql.Identifier(options.spec.schema, name),
                sql.SQL(", ").join(map(sql.Identifier, impl.primary_key)),
            )
        )


def _add_trigger(
    conn: psycopg.Connection[Any],
    impl: Implementation,
    options: Options,
    name: str,
    function: tuple[str, str],
) -> None:
    """The trigger where this version would put it: on the parent (plain or 13+), else on each partition."""
    schema = options.spec.schema
    if impl.shape == "plain" or impl.major >= 13:
        conn.execute(sqlgen.create_trigger(f"{SCRATCH}_trg", schema, name, *function))
        return
    for key in range(options.spec.modulus):
        conn.execute(sqlgen.create_trigger(f"{SCRATCH}_trg", schema, f"{name}_p{key}", *function))


def _build_before(conn: psycopg.Connection[Any], impl: Implementation, options: Options) -> str:
    """The current implementation on a scratch copy; returns its label."""
    name = f"{SCRATCH}_before"
    _scratch(conn, impl, options, name)
    _add_pk(conn, impl, options, name)
    triggers = key_triggers(conn, options.spec, impl)
    if impl.generated_kind:
        return "generated (not recreated: nothing to compare)"
    if triggers:
        _add_trigger(conn, impl, options, name, (triggers[0].function_schema, triggers[0].function_name))
        return f"trigger {triggers[0].function_name}()"
    if impl.checks:
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD {}").format(
                sql.Identifier(options.spec.schema, name), sql.SQL(impl.checks[0].definition)
            )
        )
        return "CHECK"
    return "no trigger or CHECK"


def _build_after(conn: psycopg.Connection[Any], impl: Implementation, options: Options, strategy: str) -> str:
    """The strategy's end state on a scratch copy; returns its label."""
    spec = options.spec
    name = f"{SCRATCH}_after"
    target = sql.Identifier(spec.schema, name)
    _scratch(conn, impl, options, name)
    if strategy == "generated":
        type_row = conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass AND attname = %s",
            (target.as_string(conn), spec.key_column),
        ).fetchone()
        key_type = str(type_row[0]) if type_row else "integer"
        conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(target, sql.Identifier(spec.key_column)))
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD COLUMN {} {} GENERATED ALWAYS AS ({}) STORED").format(
                target, sql.Identifier(spec.key_column), sql.SQL(key_type), sqlgen.safe_expression(spec)
            )
        )
        _add_pk(conn, impl, options, name)
        return "STORED generated column"
    _add_pk(conn, impl, options, name)
    if strategy == "check":
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD CHECK ({} = {})").format(
                target, sql.Identifier(spec.key_column), sqlgen.safe_expression(spec)
            )
        )
        return "CHECK, no trigger"
    body = sqlgen.function_body(spec).as_string(conn)
    conn.execute(sqlgen.create_function(spec, spec.schema, f"{SCRATCH}_fn", body))
    _add_trigger(conn, impl, options, name, (spec.schema, f"{SCRATCH}_fn"))
    return "trigger with the safe formula"


def measure(
    conn: psycopg.Connection[Any],
    options: Options,
    impl: Implementation,
    strategy: str,
    *,
    rows: int = 200,
    rounds: int = 5,
) -> MeasureReport:
    """Time single-row INSERTs and one INSERT…SELECT per round into both scratch copies, then roll back."""
    spec = options.spec
    report = MeasureReport(table=spec.label, before="", after="", rows=0, rounds=rounds)
    with conn.transaction(force_rollback=True):
        apply_timeouts(conn, options, "scan")
        columns = _columns(conn, impl, options)
        names = sql.SQL(", ").join(map(sql.Identifier, columns))
        sample = sql.Identifier(spec.schema, f"{SCRATCH}_rows")
        conn.execute(
            sql.SQL("CREATE TABLE {} AS SELECT {} FROM {} LIMIT {}").format(
                sample, names, spec.table_ident, sql.Literal(rows)
            )
        )
        values = conn.execute(sql.SQL("SELECT {} FROM {}").format(names, sample)).fetchall()
        if not values:
            report.note = f"{spec.label} is empty, there are no rows to copy"
            return report
        report.rows = len(values)
        report.before = _build_before(conn, impl, options)
        report.after = _build_after(conn, impl, options, strategy)
        placeholders = sql.SQL(", ").join(sql.Placeholder() * len(columns))
        for round_number in range(rounds):
            order = ("before", "after") if round_number % 2 == 0 else ("after", "before")
            for variant in order:
                table = sql.Identifier(spec.schema, f"{SCRATCH}_{variant}")
                single = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(table, names, placeholders)
                conn.execute(sql.SQL("TRUNCATE {}").format(table))
                timings = []
                for row in values:
                    started = time.perf_counter()
                    conn.execute(single, row)
                    timings.append((time.perf_counter() - started) * 1e6)
                conn.execute(sql.SQL("TRUNCATE {}").format(table))
                started = time.perf_counter()
                conn.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(table, names, names, sample))
                bulk = (time.perf_counter() - started) * 1e6 / len(values)
                getattr(report, f"single_{variant}").extend(timings)
                getattr(report, f"bulk_{variant}").append(bulk)
    return report

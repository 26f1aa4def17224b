"""--measure: INSERT cost of the current and the target implementation, alternated until the answer is clear.

Two steps, so the real table is never held while the rounds run:
1. one short read-only transaction copies the table's definition from the catalog (measure_copy) and a
   random sample of its rows (COPY, so every type round-trips);
2. one transaction that is always rolled back builds a full scratch copy per variant (every index,
   constraint, default, sequence and trigger, partitions with their own indexes) and alternates rounds of
   single-row INSERTs and one INSERT…SELECT into each, until the bootstrap interval of the ratio of medians
   excludes 1.0 or the time budget runs out. Nothing is committed and nothing is left behind.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from exporter.introspect import Implementation
from exporter.pg.catalog import relation_tree
from migrations import sqlgen
from migrations.catalog import key_triggers, table_oid, table_size
from migrations.measure_copy import Changes, TableDefinition, create_copy, read_definition
from migrations.measure_stats import LEVEL, MIN_ROUNDS, Interval, look_alpha, next_look, ratio_interval
from migrations.options import Options
from migrations.retry import apply_timeouts

SCRATCH = "partkey_measure"
DEFAULT_SECONDS = 60.0
BULK_ROWS = 5000  # rows per INSERT…SELECT (the whole sample)
SINGLE_ROWS = 500  # single-row INSERTs per variant per round (the first rows of the sample)
WARMUP_ROUNDS = 2  # one of each order, discarded: caches, plans and the copies' first pages
SINGLE_NOTE = (
    "single-row figures include the client round trip and psycopg (one prepared INSERT per row, as an "
    "application sends them); nothing is committed in either variant, so no commit cost either; rows with a "
    "wrong key are not sampled"
)

Setup = Callable[[psycopg.Connection[Any], str], None]


@dataclass(frozen=True)
class Variant:
    """One way to keep the key: the copied table with these changes, then `setup` (a CHECK or trigger) if any."""

    label: str
    changes: Changes
    setup: Setup | None = None


@dataclass
class Workload:
    """Per-round values of one workload for both variants (µs per row), and the last interval."""

    name: str
    before: list[float] = field(default_factory=list)
    after: list[float] = field(default_factory=list)
    interval: Interval | None = None

    def to_dict(self, seconds: float) -> dict[str, Any]:
        """Medians, min/max, the ratio, its interval and the verdict."""
        data: dict[str, Any] = {"workload": self.name, "unit": "µs per row", "rounds": len(self.before)}
        for variant in ("before", "after"):
            values = getattr(self, variant)
            data[variant] = (
                {"median": statistics.median(values), "min": min(values), "max": max(values)} if values else None
            )
        if self.interval is not None:
            data["ratio"] = self.interval.ratio
            data["interval"] = [self.interval.low, self.interval.high]
            data["verdict"] = self.interval.verdict(seconds)
        else:
            data["ratio"] = data["interval"] = None
            data["verdict"] = f"no difference measurable in {seconds:.0f} s"
        return data


@dataclass
class MeasureReport:
    """What was compared, on what, for how long, and what it showed."""

    table: str
    before: str = ""
    after: str = ""
    copied: str = ""
    sample_rows: int = 0
    single_rows: int = 0
    warmup_rounds: int = WARMUP_ROUNDS
    budget_seconds: float = DEFAULT_SECONDS
    seconds: float = 0.0
    looks: int = 0
    synchronous_commit: str = ""
    single: Workload = field(default_factory=lambda: Workload("single-row INSERT"))
    bulk: Workload = field(default_factory=lambda: Workload("INSERT…SELECT"))
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The same facts as lines(), for --json."""
        return {
            "table": self.table,
            "before": self.before,
            "after": self.after,
            "copied": self.copied,
            "sample_rows": self.sample_rows,
            "single_rows_per_round": self.single_rows,
            "warmup_rounds_discarded": self.warmup_rounds,
            "budget_seconds": self.budget_seconds,
            "seconds": round(self.seconds, 2),
            "looks": self.looks,
            "confidence": LEVEL,
            "synchronous_commit": self.synchronous_commit,
            "single_row_includes": SINGLE_NOTE,
            "workloads": [w.to_dict(self.seconds) for w in (self.single, self.bulk)] if self.note is None else [],
            "note": self.note,
        }

    def lines(self) -> list[str]:
        """Medians, min/max, ratio with its interval, and a verdict per workload."""
        if self.note is not None:
            return [f"measure: {self.note}; nothing was measured"]
        rounds = len(self.bulk.before)
        out = [
            f"measure: INSERT cost on scratch copies of {self.table} in one rolled-back transaction; "
            f"{self.sample_rows} sampled rows, {rounds} rounds per variant after {self.warmup_rounds} warm-up "
            f"rounds, variants alternated, {self.seconds:.1f} s of a {self.budget_seconds:g} s budget, "
            f"synchronous_commit={self.synchronous_commit}",
            f"  {self.copied}",
            f"  before: {self.before}",
            f"  after:  {self.after}",
        ]
        for workload in (self.single, self.bulk):
            data = workload.to_dict(self.seconds)
            b, a = data["before"], data["after"]
            interval = workload.interval
            out.append(
                f"  {workload.name} ({self.single_rows if workload is self.single else self.sample_rows} rows), "
                f"µs per row, median (min-max): before {b['median']:.2f} ({b['min']:.2f}-{b['max']:.2f}), "
                f"after {a['median']:.2f} ({a['min']:.2f}-{a['max']:.2f})"
            )
            if interval is None:
                out.append(
                    f"    only {len(workload.before)} round(s) fit in the budget, too few for an interval "
                    f"(need {MIN_ROUNDS}): {data['verdict']}"
                )
                continue
            out.append(
                f"    after/before x{interval.ratio:.3f}, {LEVEL:.0%} interval x{interval.low:.3f}-x{interval.high:.3f}"
                f" (paired bootstrap over {interval.rounds} rounds, widened for {self.looks} look(s) at the data): "
                f"{data['verdict']}"
            )
        out.append(f"  {SINGLE_NOTE}")
        return out


def _sample(conn: psycopg.Connection[Any], options: Options, columns: list[str], rows: int) -> bytes:
    """About `rows` random rows of the real table with a right key, as COPY text (TABLESAMPLE on a big table)."""
    spec = options.spec
    size = table_size(conn, spec)
    estimate = size.rows or size.heap_bytes // 100  # reltuples is unknown before the first ANALYZE
    percent = 100.0 if estimate <= 0 else min(100.0, 300.0 * rows / estimate)
    source = sql.Identifier(spec.source_column)
    # Rows both variants accept: a wrong key, or the one collection whose hashtext overflows abs(), would make
    # the trigger or the CHECK raise instead of being timed.
    valid = sql.SQL("hashtext({}::text) <> -2147483648").format(source)
    if spec.key_column in columns:
        valid = sql.SQL("{} AND {} = {}").format(valid, sql.Identifier(spec.key_column), sqlgen.safe_expression(spec))
    names = sql.SQL(", ").join(map(sql.Identifier, columns))
    data = b""
    for pct in (percent, 100.0) if percent < 100.0 else (100.0,):
        # ORDER BY random(): a bare LIMIT would take every row from the first partitions scanned.
        query = sql.SQL(
            "COPY (SELECT {} FROM {} TABLESAMPLE SYSTEM ({}) WHERE {} ORDER BY random() LIMIT {}) TO STDOUT"
        ).format(names, spec.table_ident, sql.Literal(pct), valid, sql.Literal(rows))
        with conn.cursor() as cur, cur.copy(query) as copy:
            data = b"".join(bytes(chunk) for chunk in copy)
        if data.count(b"\n") >= rows:
            break
    return data


def read_sample(
    conn: psycopg.Connection[Any], options: Options, impl: Implementation, rows: int
) -> tuple[TableDefinition, list[str], bytes]:
    """Step 1, one short transaction: the definition, the columns an application INSERT names, a row sample."""
    with conn.transaction():
        apply_timeouts(conn, options, "scan")
        functions = {(t.function_schema, t.function_name) for t in key_triggers(conn, options.spec, impl)}
        definition = read_definition(conn, table_oid(conn, options.spec), functions, impl.major)
        skip = {options.spec.key_column, options.new_column} if impl.shape == "plain" else set()
        # Generated and identity/serial columns are the database's to fill; a plain table's trigger sets the key.
        columns = [c.name for c in definition.columns if not c.generated and not c.uses_sequence and c.name not in skip]
        data = _sample(conn, options, columns, rows)
    return definition, columns, data


def _variants(
    conn: psycopg.Connection[Any], options: Options, impl: Implementation, strategy: str
) -> tuple[Variant, Variant]:
    """The current implementation as it is, and the strategy's end state, each on a full copy."""
    spec = options.spec
    triggers = key_triggers(conn, spec, impl)
    if triggers:
        before = f"trigger {triggers[0].function_name}() (the table as it is)"
    elif impl.generated_kind:
        before = f"{impl.generated_kind} generated column (the table as it is)"
    elif impl.checks:
        before = "CHECK (the table as it is)"
    else:
        before = "no trigger or CHECK (the table as it is)"
    checks = tuple(c.name for c in impl.checks)
    expression = sqlgen.safe_expression(spec).as_string(conn)
    if strategy == "generated":
        after = Variant(
            "STORED generated column, no trigger",
            Changes(key_triggers=False, key_checks=checks, generated_key=(spec.key_column, expression)),
        )
    elif strategy == "check":

        def add_check(conn: psycopg.Connection[Any], name: str) -> None:
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD CHECK ({} = {})").format(
                    sql.Identifier(spec.schema, name), sql.Identifier(spec.key_column), sqlgen.safe_expression(spec)
                )
            )

        after = Variant("CHECK, no trigger", Changes(key_triggers=False, key_checks=checks), add_check)
    else:

        def add_trigger(conn: psycopg.Connection[Any], name: str) -> None:
            body = sqlgen.function_body(spec).as_string(conn)
            conn.execute(sqlgen.create_function(spec, spec.schema, f"{SCRATCH}_fn", body))
            # Where this version would put it: on the parent (plain or 13+), else on each partition.
            relations = [name] if impl.shape == "plain" or impl.major >= 13 else _partitions(conn, spec.schema, name)
            for relation in relations:
                conn.execute(
                    sqlgen.create_trigger(f"{SCRATCH}_trg", spec.schema, relation, spec.schema, f"{SCRATCH}_fn")
                )

        after = Variant("trigger with the safe formula", Changes(key_triggers=False), add_trigger)
    return Variant(before, Changes()), after


def _leaf_indexes(conn: psycopg.Connection[Any], table: sql.Identifier) -> int:
    """Indexes on the copy's leaf tables: what every INSERT maintains."""
    row = conn.execute(
        relation_tree("%s::regclass::oid")
        + "SELECT count(*) FROM tree JOIN pg_class c ON c.oid = tree.relid JOIN pg_index x ON x.indrelid = c.oid "
        "WHERE c.relkind = 'r'",
        (table.as_string(conn),),
    ).fetchone()
    return int(row[0]) if row else 0


def _partitions(conn: psycopg.Connection[Any], schema: str, name: str) -> list[str]:
    """The copy's partitions."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid WHERE h.inhparent = %s::regclass",
        (sql.Identifier(schema, name).as_string(conn),),
    ).fetchall()
    return [str(r[0]) for r in rows]


def compare(
    conn: psycopg.Connection[Any],
    options: Options,
    definition: TableDefinition,
    columns: list[str],
    data: bytes,
    before: Variant,
    after: Variant,
    *,
    seconds: float = DEFAULT_SECONDS,
    single_rows: int = SINGLE_ROWS,
    seed: int | None = None,
) -> MeasureReport:
    """Step 2, in one transaction that is rolled back: build both copies, then alternate rounds."""
    spec = options.spec
    report = MeasureReport(table=spec.label, before=before.label, after=after.label, budget_seconds=seconds)
    rng = random.Random(seed)
    with conn.transaction(force_rollback=True):
        apply_timeouts(conn, options, "scan")
        row = conn.execute("SELECT current_setting('synchronous_commit')").fetchone()
        report.synchronous_commit = str(row[0]) if row else "?"
        types = {c.name: c.type for c in definition.columns}
        sample = sql.Identifier(spec.schema, f"{SCRATCH}_rows")
        conn.execute(
            sql.SQL("CREATE TABLE {} ({})").format(
                sample,
                sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(types[c])) for c in columns),
            )
        )
        names = sql.SQL(", ").join(map(sql.Identifier, columns))
        with conn.cursor() as cur, cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(sample, names)) as copy:
            copy.write(data)
        # As text: the server parses each value by its column's type, exactly as it was stored.
        values = conn.execute(
            sql.SQL("SELECT {} FROM {}").format(
                sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns), sample
            )
        ).fetchall()
        if not values:
            report.note = f"{spec.label} is empty, there are no rows to copy"
            return report
        report.sample_rows = len(values)
        singles = values[:single_rows]
        report.single_rows = len(singles)
        for variant, name in ((before, f"{SCRATCH}_before"), (after, f"{SCRATCH}_after")):
            create_copy(conn, definition, name, variant.changes)
            if variant.setup is not None:
                variant.setup(conn, name)
        report.copied = definition.describe(_leaf_indexes(conn, sql.Identifier(spec.schema, f"{SCRATCH}_before")))
        placeholders = sql.SQL(", ").join(sql.Placeholder() * len(columns))
        statements = {
            variant: (
                sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                    sql.Identifier(spec.schema, f"{SCRATCH}_{variant}"), names, placeholders
                ),
                sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(
                    sql.Identifier(spec.schema, f"{SCRATCH}_{variant}"), names, names, sample
                ),
            )
            for variant in ("before", "after")
        }

        def one(variant: str) -> tuple[float, float]:
            single, bulk = statements[variant]
            # Each run's rows are rolled back to a savepoint: TRUNCATE would scan shared_buffers once per
            # partition and index (50-180 ms for 10 partitions here), far more than the inserts themselves.
            timings = []
            with conn.transaction(force_rollback=True):
                for row in singles:
                    started = time.perf_counter()
                    conn.execute(single, row)
                    timings.append((time.perf_counter() - started) * 1e6)
            with conn.transaction(force_rollback=True):
                started = time.perf_counter()
                conn.execute(bulk)
                bulk_seconds = time.perf_counter() - started
            return statistics.median(timings), bulk_seconds * 1e6 / len(values)

        started = time.monotonic()
        look_at, rounds = MIN_ROUNDS, 0
        while True:
            order = ("before", "after") if rounds % 2 == 0 else ("after", "before")
            results = {variant: one(variant) for variant in order}
            rounds += 1
            measured = rounds - WARMUP_ROUNDS
            if measured > 0:
                for index, workload in enumerate((report.single, report.bulk)):
                    workload.before.append(results["before"][index])
                    workload.after.append(results["after"][index])
            report.seconds = time.monotonic() - started
            # Never fewer than MIN_ROUNDS: fewer give no interval, so the budget stretches to reach them.
            out_of_time = report.seconds >= seconds and measured >= MIN_ROUNDS
            if measured >= look_at or out_of_time:
                report.looks += 1
                alpha = look_alpha(report.looks)
                for workload in (report.single, report.bulk):
                    workload.interval = ratio_interval(workload.before, workload.after, alpha, rng=rng)
                look_at = next_look(measured)
                if all(w.interval is not None and w.interval.decided for w in (report.single, report.bulk)):
                    break
            if out_of_time:
                break
    return report


def measure(
    conn: psycopg.Connection[Any],
    options: Options,
    impl: Implementation,
    strategy: str,
    *,
    seconds: float | None = None,
    rows: int = BULK_ROWS,
    single_rows: int = SINGLE_ROWS,
) -> MeasureReport:
    """Copy the definition and a sample, then compare the current implementation with the strategy's."""
    definition, columns, data = read_sample(conn, options, impl, rows)
    if not data:
        return MeasureReport(table=options.spec.label, note=f"{options.spec.label} is empty, there are no rows to copy")
    before, after = _variants(conn, options, impl, strategy)
    budget = seconds if seconds is not None else options.measure_seconds
    return compare(conn, options, definition, columns, data, before, after, seconds=budget, single_rows=single_rows)


def emit(
    conn: psycopg.Connection[Any], options: Options, impl: Implementation, strategy: str, out: Callable[[str], None]
) -> None:
    """Run --measure, print its lines through `out`, and hand the report as a dict to options.on_measure."""
    report = measure(conn, options, impl, strategy)
    for line in report.lines():
        out(line)
    if options.on_measure is not None:
        options.on_measure(report.to_dict())

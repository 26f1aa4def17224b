"""`tables: auto`: find every table whose integer key a hashtext formula maintains, and say why each was chosen."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import psycopg

from exporter.config import TableConfig, TargetConfig
from exporter.formula_catalog import table_formulas
from exporter.keyspec import KeySpec
from exporter.monotonic import Watermark, pick_watermark
from exporter.pg.errors import failure_line
from exporter.snapshot import SnapshotStore
from exporter.target import Target, TargetUnavailableError

log = logging.getLogger(__name__)

# Ordinary tables and partitioned parents (partitions are watched through their parent) that have something that
# can keep a key: a BEFORE ROW INSERT trigger (on the table or, PG 11/12, on its partitions), a generated column,
# or a CHECK or partition key that mentions hashtext. Only these get the formula reader (it parses every function
# of the schema for each table): a schema of hundreds of plain tables costs one query.
_CANDIDATES_SQL = """
SELECT n.nspname::text, c.relname::text,
       ARRAY(SELECT a.attname::text FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)
             ORDER BY a.attnum) AS key_columns
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%%'
  AND (EXISTS (SELECT 1 FROM pg_trigger t
               WHERE NOT t.tgisinternal AND t.tgtype & 7 = 7
                 AND (t.tgrelid = c.oid
                      OR t.tgrelid IN (SELECT i.inhrelid FROM pg_inherits i WHERE i.inhparent = c.oid)))
       OR EXISTS (SELECT 1 FROM pg_attribute a
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND {generated})
       OR EXISTS (SELECT 1 FROM pg_constraint k
                  WHERE k.conrelid = c.oid AND k.contype = 'c' AND pg_get_constraintdef(k.oid) ILIKE '%%hashtext%%')
       OR (c.relkind = 'p' AND pg_get_partkeydef(c.oid) ILIKE '%%hashtext%%'))
ORDER BY 1, 2
"""


@dataclass(frozen=True)
class Found:
    """A discovered table, what keeps its key, and the table config the checks get."""

    table: TableConfig
    source: str  # trigger, generated, check: the kind of place that keeps the key
    maintained_by: str  # that place, named (trigger set_partition_key -> public.compute_partition_key())
    formula: str  # the formula it computes, in its canonical safe form
    watermark: Watermark  # the column incremental verification uses (table.monotonic_column), or why none

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {
            "table": self.table.label,
            "key_column": self.table.key_column,
            "source": self.source,
            "maintained_by": self.maintained_by,
            "formula": self.formula,
            **self.watermark.to_dict(),
        }


@dataclass(frozen=True)
class Skipped:
    """A table discovery looked at and left out, and why."""

    table: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {"table": self.table, "reason": self.reason}


@dataclass(frozen=True)
class DiscoveryResult:
    """One discovery run on one target: what it found (the last good set when it failed) and how it went."""

    target: str
    success: bool
    found: tuple[Found, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    error: str | None = None
    duration_seconds: float = 0.0
    finished_at: float = 0.0
    last_success_at: float | None = None
    interval_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {
            "target": self.target,
            "success": self.success,
            "error": self.error,
            "last_success_at": self.last_success_at,
            "tables": [found.to_dict() for found in self.found],
            "skipped": [skipped.to_dict() for skipped in self.skipped],
        }


def _matches(globs: list[str], schema: str, table: str) -> bool:
    """Does schema.table match one of the exclude globs (a glob without a dot names the table in any schema)?"""
    return any(fnmatchcase(f"{schema}.{table}" if "." in glob else table, glob) for glob in globs)


def discover(conn: psycopg.Connection[Any], config: TargetConfig) -> tuple[list[Found], list[Skipped]]:
    """The tables `tables: auto` watches on this target, and the keyed tables it leaves out (with the reason)."""
    configured = {table.label for table in config.configured_tables}
    found: list[Found] = []
    skipped: list[Skipped] = []
    # attgenerated exists from PG 12 (generated columns are new there).
    generated = "a.attgenerated <> ''" if conn.info.server_version >= 120000 else "false"
    candidates = conn.execute(_CANDIDATES_SQL.format(generated=generated)).fetchall()
    for schema, table, key_columns in candidates:
        if config.schemas is not None and not any(fnmatchcase(schema, glob) for glob in config.schemas):
            continue
        label = f"{schema}.{table}"
        if _matches(config.exclude, schema, table):
            skipped.append(Skipped(label, "excluded by exclude:"))
            continue
        for column in key_columns:
            formulas = table_formulas(conn, KeySpec(table=table, schema=schema, key_column=column))
            if formulas is None or formulas.table_formula is None or formulas.maintained_by is None:
                continue
            place = next(p for p in formulas.places if p.name == formulas.maintained_by)
            if place.kind in ("partition", "index"):
                # The partition expression routes rows itself: there is no stored key column to verify.
                reason = f"keyed by its {formulas.maintained_by}: no stored key column to verify"
                if all(s.table != label for s in skipped):
                    skipped.append(Skipped(label, reason))
                continue
            if label in configured:
                skipped.append(Skipped(label, f"configured in tables: (kept by {formulas.maintained_by})"))
                break
            formula = formulas.table_formula
            watermark = pick_watermark(conn, schema, table)
            watched = TableConfig(
                table=table,
                schema=schema,
                key_column=column,
                source_column=formula.columns[0] if formula.columns else "collection_id",
                modulus=formula.modulus,
                key_expression="auto",
                monotonic_column=watermark.column,
                checks=config.checks,
            )
            found.append(Found(watched, place.kind, formulas.maintained_by, formula.normalised, watermark))
            break  # one key per table: the first integer column a formula maintains
    return found, skipped


class DiscoveryRunner:
    """Runs discovery on a target's connection, on the implementation check's schedule, and publishes it."""

    def __init__(
        self,
        target: Target,
        config: TargetConfig,
        store: SnapshotStore,
        apply: Callable[[Target, list[Found]], None],
    ) -> None:
        self.target = target
        self.config = config
        self.store = store
        self.apply = apply
        self.interval = config.checks.implementation.interval
        self.timeout = config.checks.implementation.statement_timeout
        self._failing = False

    def run(self) -> DiscoveryResult:
        """Discover once; on success apply the new table set, on failure keep the last good one. Never raises."""
        started = time.monotonic()
        previous = self.store.current.discoveries.get(self.target.name)
        found: list[Found] = []
        skipped: list[Skipped] = []
        error: str | None = None
        try:
            with self.target.session() as conn, conn.transaction():
                self.target.begin_check(conn, statement_timeout=self.timeout)
                found, skipped = discover(conn, self.config)
        except TargetUnavailableError as failure:
            error = str(failure)
        except psycopg.Error as failure:
            error = failure_line(failure, self.timeout, self.target.lock_timeout)
        except Exception as failure:  # a bug in discovery must not take the daemon down
            log.exception("%s: discovery failed unexpectedly", self.target.name)
            error = f"{type(failure).__name__}: {failure}"
        finished = time.time()
        if error is None:
            if self._failing:
                log.warning("%s: discovery recovered", self.target.name)
            self._failing = False
            self.apply(self.target, found)
            tables, left_out = tuple(found), tuple(skipped)
            last_success: float | None = finished
        else:
            error = self.target.scrub(error)
            if not self._failing:
                log.error("%s: discovery failed, the last tables found stay watched: %s", self.target.name, error)
            self._failing = True
            tables = previous.found if previous else ()
            left_out = previous.skipped if previous else ()
            last_success = previous.last_success_at if previous else None
        result = DiscoveryResult(
            target=self.target.name,
            success=error is None,
            found=tables,
            skipped=left_out,
            error=error,
            duration_seconds=time.monotonic() - started,
            finished_at=finished,
            last_success_at=last_success,
            interval_seconds=self.interval,
        )
        if not self.target.closed:  # a reload removed the target meanwhile: its series are gone, keep them so
            self.store.publish_discovery(result)
        return result


def configured_lines(table: TableConfig) -> list[str]:
    """A configured table's lines in the discovery report: it is watched as written, watermark included."""
    column = table.monotonic_column
    incremental = f"on {column}: monotonic_column in tables:" if column else "off: no monotonic_column in tables:"
    return [
        f"  watch {table.label} (key {table.key_column}): configured in tables:",
        f"        incremental {incremental}",
    ]


def render_text(result: DiscoveryResult, configured: list[TableConfig]) -> str:
    """What a target watches and why, for people (report and report --discover)."""
    status = "ok" if result.success else f"FAILED: {result.error}"
    lines = [f"{result.target}: discovery {status}"]
    for table in configured:
        lines += configured_lines(table)
    for found in result.found:
        lines.append(
            f"  watch {found.table.label} (key {found.table.key_column}): discovered, kept by "
            f"{found.maintained_by} = {found.formula}"
        )
        lines.append(f"        incremental {found.watermark.reason}")
    for skipped in result.skipped:
        lines.append(f"  skip  {skipped.table}: {skipped.reason}")
    if not configured and not result.found:
        lines.append("  nothing to watch: no table whose integer key a hashtext formula keeps")
    return "\n".join(lines) + "\n"


# A target's last discovery with the tables its config names: what the report and the status page show for it.
TargetDiscovery = tuple[DiscoveryResult, list[TableConfig]]

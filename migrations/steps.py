"""A plan: ordered steps, each one transaction, with its lock, whether it rewrites, and an estimate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from psycopg import sql

from migrations.catalog import TableSize

StepKind = Literal["ddl", "verify", "verify-new", "concurrent", "backfill"]
Statement = sql.SQL | sql.Composed

# Rates measured in postgres-facts.md (PG 18, 2 vCPUs, 1M rows / 394 MB); estimates only, re-measure.
REWRITE_SECONDS_PER_GB = 7.7  # ADD COLUMN ... STORED: 3.04 s for 394 MB
INDEX_SECONDS_PER_MILLION_ROWS = 0.75  # re-adding the PK or an index: 0.64-0.74 s per 1M rows
VALIDATE_SECONDS_PER_GB = 0.6  # VALIDATE CONSTRAINT: 239 ms for 394 MB
SCAN_SECONDS_PER_GB = 0.5  # full verification: 190 ms for 391 MB
BACKFILL_SECONDS_PER_GB = 42.0  # batched UPDATE of the copy: 12.8 s for 1M rows / 306 MB (measured here, PG 18)
BRIEF_SECONDS = 0.01  # catalog-only DDL once the lock is granted
BYTES_PER_ROW_GUESS = 400  # the facts' table: 394 bytes a row; used when reltuples is unknown
GB = 1024**3


@dataclass(frozen=True)
class Step:
    """One transaction of the migration."""

    name: str
    title: str
    statements: tuple[Statement, ...]
    lock: str
    rewrites: bool
    estimate_seconds: float
    kind: StepKind = "ddl"
    timeout: Literal["ddl", "scan"] = "ddl"
    note: str | None = None
    index: str | None = None  # concurrent steps: the index they build
    expected: str | None = None  # concurrent steps: pg_get_indexdef of that index once built
    columns: tuple[str, str] | None = None  # verify-new and backfill steps: (key column, its copy)


@dataclass
class Plan:
    """Everything one command would do to one table, and why."""

    direction: Literal["upgrade", "downgrade"]
    strategy: str
    reason: str
    steps: list[Step] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    final_state: str = "upgraded"
    # What depends on the key column besides the table's indexes and constraints, and what the plan does with it.
    dependents: list[dict[str, Any]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """True when nothing is left to change (verification steps alone change nothing)."""
        return not any(step.kind in ("ddl", "concurrent", "backfill") for step in self.steps)

    def total_seconds(self) -> float:
        """Sum of the steps' estimates."""
        return sum(step.estimate_seconds for step in self.steps)

    def to_dict(self, conn: Any) -> dict[str, Any]:
        """A JSON-ready dictionary, with each statement rendered as SQL text."""
        return {
            "direction": self.direction,
            "strategy": self.strategy,
            "reason": self.reason,
            "final_state": self.final_state,
            "warnings": self.warnings,
            "key_column_dependents": self.dependents,
            "steps": [
                {
                    "name": s.name,
                    "title": s.title,
                    "lock": s.lock,
                    "rewrites": s.rewrites,
                    "estimate_seconds": round(s.estimate_seconds, 3),
                    "timeout": s.timeout,
                    "kind": s.kind,
                    "note": s.note,
                    "statements": [st.as_string(conn) for st in s.statements],
                }
                for s in self.steps
            ],
        }


def rows_of(size: TableSize) -> int:
    """Row count to estimate with: the planner's, or a guess from the heap size before any ANALYZE."""
    return size.rows if size.rows > 0 else size.heap_bytes // BYTES_PER_ROW_GUESS


def rewrite_estimate(size: TableSize) -> float:
    """Seconds to rewrite the table and its indexes."""
    return size.total_bytes / GB * REWRITE_SECONDS_PER_GB


def index_estimate(size: TableSize, indexes: int) -> float:
    """Seconds to build this many indexes."""
    return indexes * rows_of(size) / 1_000_000 * INDEX_SECONDS_PER_MILLION_ROWS


def scan_estimate(size: TableSize, per_gb: float = SCAN_SECONDS_PER_GB) -> float:
    """Seconds for one sequential pass over the heap."""
    return size.heap_bytes / GB * per_gb


def human_seconds(seconds: float) -> str:
    """1.2 ms, 340 ms, 2.5 s, 4.1 min."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms" if seconds >= 0.001 else "<1 ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def human_bytes(size: int) -> str:
    """Bytes in kB/MB/GB."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"  # pragma: no cover

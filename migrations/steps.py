"""A plan: ordered steps, each one transaction, with its lock, whether it rewrites, and an estimate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from psycopg import sql

from migrations.catalog import BYTES_PER_ROW_GUESS, TableSize

StepKind = Literal["ddl", "verify", "verify-new", "concurrent", "backfill"]
Statement = sql.SQL | sql.Composed

# Rates: a part per row (the formula is computed, index entries written) plus a part per GB read or written.
# REWRITE and VALIDATE recalibrated 2026-11-30 05:22-05:25 UTC on PG 18 (test server, fsync off), 1M rows, this
# 2-vCPU VM at load average 7-8 (shared with 6 other sessions): three runs of tests/reliability/
# test_migrate_estimates.py took 0.23/0.76/0.76x (VALIDATE) and 0.34/0.79/0.79x (rewrite) of the previous rates'
# estimates; the rates were scaled by the medians (x0.76, x0.79). SCAN, INDEX and BACKFILL were not re-measured.
# Estimates only: re-measure on your machine.
REWRITE_SECONDS_PER_MILLION_ROWS = 2.4  # ADD COLUMN ... STORED: the expression, the heap and every index rewritten
REWRITE_SECONDS_PER_GB = 2.4
VALIDATE_SECONDS_PER_MILLION_ROWS = 0.42  # VALIDATE CONSTRAINT: the CHECK evaluated on every row
VALIDATE_SECONDS_PER_GB = 0.23
SCAN_SECONDS_PER_MILLION_ROWS = 0.2  # full verification: the formula on every row
SCAN_SECONDS_PER_GB = 0.3
INDEX_SECONDS_PER_MILLION_ROWS = 0.75  # re-adding the PK or an index: 0.64-0.74 s per 1M rows
BACKFILL_SECONDS_PER_GB = 42.0  # batched UPDATE of the copy: 12.8 s for 1M rows / 306 MB (measured here, PG 18)
BRIEF_SECONDS = 0.01  # catalog-only DDL once the lock is granted
# How far real step times fell from these estimates (actual / estimate, REWRITE and VALIDATE on 1M rows, PG 18, 2
# vCPUs), shown with every estimate: a quiet CI run took 0.19-0.25x of the previous rates (0.25-0.33x of these),
# heavy load (7 sessions' test suites) 1.3-1.8x of them (1.7-2.4x of these), the runs above 0.3-1.0x of these.
ACTUAL_LOW = 0.25
ACTUAL_HIGH = 2.5
# The same with every estimate times the speed migrations.probe measured just before (25 step runs, 2026-11-30
# 08:22-08:40 UTC, load average 8-13 on 2 vCPUs, docs/migrate.md): 0.20x-3.67x. Wider, not narrower: on a bursty
# shared machine a step meets other load than the probe a few seconds before it.
MEASURED_LOW = 0.2
MEASURED_HIGH = 3.7
GB = 1024**3


@dataclass(frozen=True)
class Likely:
    """The range a step's real time is likely to fall in, as factors of its estimate, and the runs they come from."""

    low: float
    high: float
    source: Literal["built-in rates", "measured speed"]

    def spread(self, seconds: float) -> str:
        """'0.3 s to 2.9 s' for an estimate of SECONDS."""
        return f"{human_seconds(seconds * self.low)} to {human_seconds(seconds * self.high)}"

    def says(self) -> str:
        """Which spread the range is: '0.25x-2.5x, the spread of real times at the built-in rates'."""
        return f"{self.low:g}x-{self.high:g}x, the spread of real times at the {self.source}"


BUILT_IN = Likely(ACTUAL_LOW, ACTUAL_HIGH, "built-in rates")
MEASURED = Likely(MEASURED_LOW, MEASURED_HIGH, "measured speed")


def likely_range(size: TableSize) -> Likely:
    """The spread measured for estimates made the way this size's were: with a measured speed or without one."""
    return MEASURED if size.speed_measured else BUILT_IN


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
    # What the estimates are based on: the table's size now, the rows that implies, and the rates.
    estimate_basis: str = ""
    # What depends on the key column besides the table's indexes and constraints, and what the plan does with it.
    dependents: list[dict[str, Any]] = field(default_factory=list)
    # The range every estimate is shown with: the built-in rates' spread, or the one with a measured speed.
    likely: Likely = BUILT_IN

    def based_on(self, size: TableSize) -> None:
        """Say what the estimates come from, and take the range that fits them (speed measured or not)."""
        self.estimate_basis = basis(size)
        self.likely = likely_range(size)

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
            "estimate_basis": self.estimate_basis,
            "estimate_range_factor": [self.likely.low, self.likely.high],
            "estimate_range_source": self.likely.source,
            "key_column_dependents": self.dependents,
            "steps": [
                {
                    "name": s.name,
                    "title": s.title,
                    "lock": s.lock,
                    "rewrites": s.rewrites,
                    "estimate_seconds": round(s.estimate_seconds, 3),
                    "estimate_range_seconds": [
                        round(s.estimate_seconds * self.likely.low, 3),
                        round(s.estimate_seconds * self.likely.high, 3),
                    ],
                    "timeout": s.timeout,
                    "kind": s.kind,
                    "note": s.note,
                    "statements": [st.as_string(conn) for st in s.statements],
                }
                for s in self.steps
            ],
        }


def basis(size: TableSize) -> str:
    """The line `plan` shows under its title: what every estimate below is computed from."""
    return (
        f"estimates from: heap {human_bytes(size.heap_bytes)} and {human_bytes(size.total_bytes)} with indexes "
        f"(pg_relation_size, now), ~{rows_of(size):,} rows (pages now x rows per page at the last ANALYZE); "
        f"per 1M rows + per GB: rewrite {REWRITE_SECONDS_PER_MILLION_ROWS:g} s + {REWRITE_SECONDS_PER_GB:g} s, "
        f"VALIDATE {VALIDATE_SECONDS_PER_MILLION_ROWS:g} s + {VALIDATE_SECONDS_PER_GB:g} s, "
        f"scan {SCAN_SECONDS_PER_MILLION_ROWS:g} s + {SCAN_SECONDS_PER_GB:g} s, "
        f"index {INDEX_SECONDS_PER_MILLION_ROWS:g} s"
        + (f"; speed: {size.probe}" if size.probe else "")
        + f"; likely range: {likely_range(size).says()} on a 2-vCPU VM"
    )


def backfill_estimate(size: TableSize) -> float:
    """Seconds for the downgrade's batched UPDATE of the copy."""
    return size.total_bytes / GB * BACKFILL_SECONDS_PER_GB * size.speed


def rows_of(size: TableSize) -> int:
    """Row count to estimate with: the planner's, or a guess from the heap size before any ANALYZE."""
    return size.rows if size.rows > 0 else size.heap_bytes // BYTES_PER_ROW_GUESS


def rewrite_estimate(size: TableSize) -> float:
    """Seconds to rewrite the table and its indexes."""
    built_in = rows_of(size) / 1e6 * REWRITE_SECONDS_PER_MILLION_ROWS + size.total_bytes / GB * REWRITE_SECONDS_PER_GB
    return built_in * size.speed


def index_estimate(size: TableSize, indexes: int) -> float:
    """Seconds to build this many indexes."""
    return indexes * rows_of(size) / 1_000_000 * INDEX_SECONDS_PER_MILLION_ROWS * size.speed


def scan_estimate(size: TableSize, kind: str = "scan") -> float:
    """Seconds for one pass over the heap that computes the formula on every row (a scan, or VALIDATE)."""
    per_rows, per_gb = (
        (VALIDATE_SECONDS_PER_MILLION_ROWS, VALIDATE_SECONDS_PER_GB)
        if kind == "validate"
        else (SCAN_SECONDS_PER_MILLION_ROWS, SCAN_SECONDS_PER_GB)
    )
    return (rows_of(size) / 1e6 * per_rows + size.heap_bytes / GB * per_gb) * size.speed


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

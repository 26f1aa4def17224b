"""What one partkey-migrate run is told: the table, the formula's inputs, and its time limits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from exporter.formula import Formula, FormulaError, parse_expression
from exporter.keyspec import KeySpec
from exporter.pg.limits import milliseconds

__all__ = ["APPLICATION_NAME", "STATE_TABLE", "Options", "milliseconds", "parse_key_expression", "parse_table"]

APPLICATION_NAME = "partkey-migrate"
STATE_TABLE = "partkey_migration_state"


@dataclass(frozen=True)
class Options:
    """Timeouts and retry bounds; defaults follow the safe-migration tools (migration-notes.md)."""

    spec: KeySpec = field(default_factory=KeySpec)
    lock_timeout: float = 1.0
    statement_timeout: float = 300.0
    scan_timeout: float = 3600.0
    max_attempts: int = 10
    backoff_initial: float = 0.2
    backoff_max: float = 10.0
    batch_size: int = 1000
    measure_seconds: float = 60.0  # --measure-seconds: the time budget of --measure
    # downgrade --keep-safe-formula: leave the safe formula in the trigger function instead of restoring it
    keep_safe_formula: bool = False
    # --key-expression: the key formula given on the command line (parsed), used instead of the catalog's.
    key_expression: Formula | None = None
    # Called with --measure's report as a dict (the CLI puts it in its --json document).
    on_measure: Callable[[dict[str, Any]], None] | None = field(default=None, compare=False)

    @property
    def new_column(self) -> str:
        """The temporary name of the generated column while both columns exist."""
        return f"{self.spec.key_column}_new"

    @property
    def old_column(self) -> str:
        """The temporary name of the plain column a downgrade fills before the swap back."""
        return f"{self.spec.key_column}_old"

    @property
    def check_name(self) -> str:
        """The name of the CHECK constraint the check strategy adds."""
        return f"{self.spec.table}_{self.spec.key_column}_check"


def parse_table(value: str) -> tuple[str, str]:
    """Split 'schema.table' (or 'table', meaning public) into its two parts."""
    schema, _, table = value.rpartition(".")
    return (schema or "public"), table


def parse_key_expression(text: str) -> Formula:
    """--key-expression: a formula of the hashtext family, parsed with PostgreSQL's parser (pglast), or ValueError."""
    try:
        return parse_expression(text)
    except FormulaError as error:
        raise ValueError(f"--key-expression {text!r} is not a key formula: {error}") from None

"""What every check provides: a name and a run() on an open connection inside a transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import psycopg

from exporter.config import TableConfig

if TYPE_CHECKING:
    from exporter.scan_target import ScanSource


class CheckFailedError(Exception):
    """A check's own, already clear failure: its message is the check's error as it stands."""


@dataclass(frozen=True)
class Outcome:
    """A check's payload plus what it adds to the cumulative series."""

    payload: Any
    rows_verified: tuple[str, int] | None = None
    probe: tuple[list[float], int] | None = None
    scan: ScanSource | None = None  # set when the check ran on the target's scan_dsn (a standby)


class Check(Protocol):
    """One check of one table."""

    name: str
    table: TableConfig
    read_write: bool
    # Whether the check's statements must all read one snapshot (REPEATABLE READ) instead of one each.
    one_snapshot: bool

    def run(self, conn: psycopg.Connection[Any]) -> Outcome:
        """Run inside an open transaction whose statement_timeout is already set."""
        ...

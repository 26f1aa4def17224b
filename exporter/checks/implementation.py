"""Check 1: how the partition key is maintained, and whether that is optimal here."""

from __future__ import annotations

from typing import Any

import psycopg

from exporter.checks.base import Outcome
from exporter.config import TableConfig
from exporter.introspect import detect


class ImplementationCheck:
    """Reads the catalog only."""

    name = "implementation"
    read_write = False
    one_snapshot = False

    def __init__(self, table: TableConfig) -> None:
        self.table = table

    def run(self, conn: psycopg.Connection[Any]) -> Outcome:
        """Detect the implementation of the configured table."""
        return Outcome(payload=detect(conn, self.table.spec))

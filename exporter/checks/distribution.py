"""Check 3: rows per partition, from statistics on every run, exactly on a slow schedule."""

from __future__ import annotations

from typing import Any

import psycopg

from exporter.checks.base import Outcome
from exporter.config import TableConfig
from exporter.partition_stats import estimated_distribution, exact_distribution


class DistributionCheck:
    """Estimates read only the catalog; exact counts scan the table."""

    read_write = False
    one_snapshot = False

    def __init__(self, table: TableConfig, exact: bool) -> None:
        self.table = table
        self.exact = exact
        self.name = "distribution_exact" if exact else "distribution"

    def run(self, conn: psycopg.Connection[Any]) -> Outcome:
        """Collect the distribution."""
        if self.exact:
            return Outcome(payload=exact_distribution(conn, self.table.spec))
        return Outcome(payload=estimated_distribution(conn, self.table.spec))

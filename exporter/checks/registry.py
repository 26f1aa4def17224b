"""Every check the exporter has, in one list: its name (also its settings key under `checks:`), how to build it
for a table, when it applies, and whether it writes. The daemon, the embedded detector and the report read this
list instead of naming the checks again; `ChecksConfig` holds each one's settings model and default schedule,
and a test keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from exporter.checks.base import Check
from exporter.checks.distribution import DistributionCheck
from exporter.checks.implementation import ImplementationCheck
from exporter.checks.insert_probe import InsertProbeCheck
from exporter.checks.verification import TableVerificationState, VerificationCheck
from exporter.config import CheckSettings, TableConfig


def _always(table: TableConfig) -> bool:
    """The check applies to every table."""
    return True


@dataclass(frozen=True)
class CheckKind:
    """One kind of check: what the registry knows about it."""

    name: str
    build: Callable[[TableConfig, TableVerificationState], Check]
    applies: Callable[[TableConfig], bool] = _always
    writes: bool = False  # runs a READ WRITE transaction (rolled back): never inside the embedded detector
    in_report: bool = False  # one of the checks `partkey-exporter report` and the detector's health() run

    def settings(self, table: TableConfig) -> CheckSettings:
        """This check's settings for TABLE (its `checks.<name>` block)."""
        settings: CheckSettings = getattr(table.checks, self.name)
        return settings


# In the order a table's checks are scheduled: implementation first, it tells the others what the table is.
REGISTRY: tuple[CheckKind, ...] = (
    CheckKind("implementation", lambda table, _: ImplementationCheck(table), in_report=True),
    CheckKind(
        "verification_incremental",
        lambda table, state: VerificationCheck(table, "incremental", state),
        applies=lambda table: table.monotonic_column is not None,
    ),
    CheckKind("verification_sample", lambda table, state: VerificationCheck(table, "sample", state)),
    CheckKind("verification_full", lambda table, state: VerificationCheck(table, "full", state), in_report=True),
    CheckKind("distribution", lambda table, _: DistributionCheck(table, exact=False), in_report=True),
    CheckKind("distribution_exact", lambda table, _: DistributionCheck(table, exact=True), in_report=True),
    CheckKind("insert_probe", lambda table, _: InsertProbeCheck(table), writes=True),
)
BY_NAME = {kind.name: kind for kind in REGISTRY}


def checks_for(
    table: TableConfig, state: TableVerificationState, *, read_only: bool = False
) -> list[tuple[Check, CheckSettings]]:
    """Every enabled check that applies to TABLE, with its settings (only those that never write when READ_ONLY)."""
    return [
        (kind.build(table, state), kind.settings(table))
        for kind in REGISTRY
        if kind.applies(table) and kind.settings(table).enabled and not (read_only and kind.writes)
    ]

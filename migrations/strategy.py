"""Which strategy fits a table's shape and server version, and why; or why none does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from exporter.introspect import Implementation

Strategy = Literal["generated", "check", "keep-trigger"]
Requested = Literal["auto", "generated", "check", "keep-trigger"]
STRATEGIES: tuple[Requested, ...] = ("auto", "generated", "check", "keep-trigger")

GENERATED_NOT_PARTITION_KEY = (
    "a generated column cannot be the partition key on any version "
    "('cannot use generated column in partition key'), and the key column cannot be dropped"
)


@dataclass(frozen=True)
class Choice:
    """The strategy to run, or None with the reason it is refused."""

    strategy: Strategy | None
    reason: str


def choose(impl: Implementation, requested: Requested = "auto") -> Choice:
    """Pick by shape and version (auto), or check that the requested strategy can work here."""
    if impl.shape in ("hash", "expression"):
        return Choice(
            None,
            f"rows are routed by {impl.shape} partitioning ({impl.partition_key}); there is no stored key to migrate",
        )
    if impl.shape not in ("plain", "list") or (impl.shape == "list" and not impl.partitioned_by_key_column):
        return Choice(
            None,
            f"{impl.shape}-partitioned by {impl.partition_key}: partkey-migrate handles "
            "plain tables and tables partitioned BY LIST (key column) only",
        )
    partitioned = impl.shape == "list"
    if requested == "auto":
        if partitioned:
            return Choice(
                "check",
                f"partitioned by {impl.partition_key}: {GENERATED_NOT_PARTITION_KEY}; "
                "a CHECK added NOT VALID then VALIDATEd replaces the trigger, which could "
                "only reject wrong keys because rows are routed before any trigger runs",
            )
        if impl.major < 12:
            return Choice(
                "keep-trigger",
                "GENERATED columns need PostgreSQL 12; keeping the trigger and fixing its formula",
            )
        return Choice(
            "generated",
            "plain table on PostgreSQL 12+: a STORED generated column computes the key "
            "on every write and cannot drift on UPDATE",
        )
    if requested == "generated":
        if partitioned:
            return Choice(
                None,
                f"strategy generated is impossible here: {GENERATED_NOT_PARTITION_KEY}; use --strategy check",
            )
        if impl.major < 12:
            return Choice(
                None,
                "strategy generated needs PostgreSQL 12+ (GENERATED columns); "
                f"this server is {impl.server_version}; use --strategy keep-trigger",
            )
        return Choice("generated", "requested")
    if requested == "check" and not partitioned:
        return Choice(
            None,
            "strategy check is for tables partitioned BY LIST (key): on a plain table the "
            "trigger fills in the key the application leaves out, and a CHECK would not",
        )
    return Choice(requested, "requested")

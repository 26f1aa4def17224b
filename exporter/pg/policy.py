"""The one policy both tools apply: the best key mechanism a table's shape and server version allow.

The exporter's implementation check asks `judge` whether what it found is that best; partkey-migrate asks `choose`
which strategy gets there. Both read `best_method`, so the rules live here once (docs/checks.md has the table).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Shape = Literal["missing", "plain", "list", "hash", "range", "expression"]
Method = Literal["generated", "trigger", "check", "expression", "hash", "none"]
METHODS: tuple[Method, ...] = ("generated", "trigger", "check", "expression", "hash", "none")

Strategy = Literal["generated", "check", "keep-trigger"]
Requested = Literal["auto", "generated", "check", "keep-trigger"]
STRATEGIES: tuple[Requested, ...] = ("auto", "generated", "check", "keep-trigger")

GENERATED_COLUMNS_SINCE = 12  # the first major version with GENERATED ... STORED columns

GENERATED_NOT_PARTITION_KEY = (
    "a generated column cannot be the partition key on any version "
    "('cannot use generated column in partition key'), and the key column cannot be dropped"
)


@dataclass(frozen=True)
class Choice:
    """The strategy to run, or None with the reason it is refused."""

    strategy: Strategy | None
    reason: str


class TableFacts(Protocol):
    """What `choose` reads of a table (exporter.introspect.Implementation has it all)."""

    @property
    def shape(self) -> Shape:
        """The table's shape."""

    @property
    def partitioned_by_key_column(self) -> bool:
        """Whether the partition key is the key column itself."""

    @property
    def partition_key(self) -> str | None:
        """pg_get_partkeydef, for messages."""

    @property
    def server_version(self) -> str:
        """SHOW server_version, for messages."""

    @property
    def major(self) -> int:
        """The server's major version."""


def best_method(major: int, shape: Shape, by_key: bool) -> Method | None:
    """The mechanism that keeps the key best on this shape and major version; None when no stored key routes rows.

    Routing by hash or expression needs no stored key. A plain table computes it in a STORED generated column
    (PG 12+; PG 11 can only keep a trigger or a CHECK). A table partitioned by the key column is routed before any
    trigger runs, and a generated column cannot be a partition key, so a CHECK is best there.
    """
    if shape in ("hash", "expression"):
        return "hash" if shape == "hash" else "expression"
    if shape == "plain":
        return "generated" if major >= GENERATED_COLUMNS_SINCE else "trigger"
    if by_key:
        return "check"
    return None


def judge(
    version: int,
    shape: Shape,
    by_key: bool,
    method: Method,
    generated_kind: str | None,
    trigger_enabled: bool | None,
    overflow: bool,
    partitions_missing_trigger: bool,
) -> tuple[bool, str]:
    """Whether the method is the best this version and shape allow, and why."""
    if overflow:
        return (
            False,
            "the key formula takes abs() of hashtext(): ids hashing to INT_MIN raise "
            "'integer out of range'; use abs(hashtext(x) % n)",
        )
    if method == "trigger" and trigger_enabled is False:
        return False, "the key trigger is disabled: nothing checks new rows' keys"
    if partitions_missing_trigger:
        return False, "some partitions have no key trigger (partitions created later do not get one)"
    if method in ("expression", "hash"):
        return True, f"the server routes rows by {method} partitioning; no stored key can drift"
    best = best_method(version // 10000, shape, by_key)
    if shape == "plain":
        if method == "generated":
            if generated_kind == "virtual":
                return False, "a VIRTUAL generated column cannot be indexed or be in a key; use STORED"
            return True, "a STORED generated column computes the key on every write"
        if best == "trigger":
            if method in ("trigger", "check"):
                return True, "PostgreSQL 11 has no GENERATED columns; a trigger or CHECK is the best it allows"
            return False, "nothing maintains the key; add a trigger or CHECK (PG 11 has no GENERATED columns)"
        if method == "check":
            return False, "a CHECK only rejects wrong keys; a STORED generated column computes them"
        if method == "trigger":
            return False, "a STORED generated column is faster and cannot drift on UPDATE (PG 12+)"
        return False, "nothing maintains the key; a STORED generated column would"
    if best == "check":
        if method == "check":
            return True, "a CHECK rejects wrong keys without a trigger's cost; routing already needs the key"
        if method == "trigger":
            return (
                False,
                "on a partitioned table the trigger only rejects wrong keys (rows are routed first); "
                "a CHECK constraint does the same 30-43% cheaper on bulk inserts",
            )
        return False, "nothing rejects a wrong key; add CHECK (key = expression)"
    return False, f"{shape}-partitioned, but not by the key column: the key is not what routes rows"


def choose(table: TableFacts, requested: Requested = "auto") -> Choice:
    """Pick the best method's strategy (auto), or check that the requested strategy can work here."""
    shape, partition_key = table.shape, table.partition_key
    best = best_method(table.major, shape, table.partitioned_by_key_column)
    if shape in ("hash", "expression"):
        return Choice(
            None,
            f"rows are routed by {shape} partitioning ({partition_key}); there is no stored key to migrate",
        )
    # A RANGE table partitioned by the key would also be best with a CHECK, but the plans handle LIST only.
    if best is None or shape not in ("plain", "list"):
        return Choice(
            None,
            f"{shape}-partitioned by {partition_key}: partkey-migrate handles "
            "plain tables and tables partitioned BY LIST (key column) only",
        )
    partitioned = shape == "list"
    if requested == "auto":
        if best == "check":
            return Choice(
                "check",
                f"partitioned by {partition_key}: {GENERATED_NOT_PARTITION_KEY}; "
                "a CHECK added NOT VALID then VALIDATEd replaces the trigger, which could "
                "only reject wrong keys because rows are routed before any trigger runs",
            )
        if best == "trigger":
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
        if best != "generated":
            return Choice(
                None,
                "strategy generated needs PostgreSQL 12+ (GENERATED columns); "
                f"this server is {table.server_version}; use --strategy keep-trigger",
            )
        return Choice("generated", "requested")
    if requested == "check" and not partitioned:
        return Choice(
            None,
            "strategy check is for tables partitioned BY LIST (key): on a plain table the "
            "trigger fills in the key the application leaves out, and a CHECK would not",
        )
    return Choice(requested, "requested")

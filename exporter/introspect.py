"""Read the catalog: server version, the table's shape and how its partition key is maintained."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import psycopg

from exporter.formula import count_overflows, mentions
from exporter.formula_body import trigger_key_use
from exporter.formula_catalog import OverflowPlace, TableFormulas, schema_overflows, table_formulas
from exporter.keyspec import KeySpec
from exporter.pg import catalog
from exporter.pg.policy import Method, Shape, judge

# pg_trigger.tgtype bits: ROW=1, BEFORE=2, INSERT=4, UPDATE=16.
_TRIGGER_ROW, _TRIGGER_BEFORE, _TRIGGER_INSERT = 1, 2, 4


class TableNotFoundError(LookupError):
    """The configured table does not exist on the target."""


@dataclass(frozen=True, slots=True)
class TriggerInfo:
    """A row trigger whose function writes or checks the key column."""

    name: str
    relation: str
    enabled: bool
    function: str
    on_parent: bool
    overflows: bool


@dataclass(frozen=True)
class CheckInfo:
    """A CHECK constraint on the key column."""

    name: str
    definition: str
    validated: bool
    overflows: bool


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """One leaf partition of the table."""

    name: str
    oid: int
    is_default: bool


@dataclass(frozen=True)
class Implementation:
    """What the catalog says about one watched table."""

    server_version_num: int
    server_version: str
    table: str
    shape: Shape
    partition_key: str | None
    partitioned_by_key_column: bool
    partitions: tuple[PartitionInfo, ...]
    has_default_partition: bool
    key_column_exists: bool
    column_count: int
    generated_kind: Literal["stored", "virtual"] | None
    generated_expression: str | None
    triggers: tuple[TriggerInfo, ...]
    trigger_location: Literal["parent", "partitions"] | None
    trigger_enabled: bool | None
    partitions_missing_trigger: tuple[str, ...]
    checks: tuple[CheckInfo, ...]
    method: Method
    formula_overflow: bool
    optimal: bool
    reason: str
    primary_key: tuple[str, ...] = field(default=())
    # Every place holding a key formula, compared (None when they could not be read), and the schema's overflows.
    formulas: TableFormulas | None = None
    schema_overflows: tuple[OverflowPlace, ...] = field(default=())

    @property
    def formula_drift(self) -> bool:
        """True when the places holding the key formula disagree with each other or with the configuration."""
        return self.formulas is not None and self.formulas.drift

    @property
    def major(self) -> int:
        """The PostgreSQL major version, e.g. 18."""
        return self.server_version_num // 10000

    @property
    def partition_count(self) -> int:
        """How many leaf partitions the table has (0 when it is not partitioned)."""
        return len(self.partitions)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        data = asdict(self)
        data["major"] = self.major
        data["partition_count"] = self.partition_count
        data["partitions"] = [p.name for p in self.partitions]
        data["formulas"] = self.formulas.to_dict() if self.formulas is not None else None
        data["formula_drift"] = self.formula_drift
        data["schema_overflow_count"] = len(self.schema_overflows)
        return data


def server_version_num(conn: psycopg.Connection[Any]) -> int:
    """The server's version as an integer, e.g. 180006."""
    return conn.info.server_version


def verification_inputs(conn: psycopg.Connection[Any], spec: KeySpec) -> tuple[bool, tuple[str, ...]]:
    """Whether the key column exists, and the primary key columns: all a verification pass needs."""
    table = catalog.find_table(conn, spec.schema, spec.table)
    if table is None:
        raise TableNotFoundError(f"table {spec.label} does not exist")
    key_exists = any(column["attname"] == spec.key_column for column in catalog.columns(conn, table["oid"]))
    return key_exists, catalog.primary_key(conn, table["oid"])


def detect(conn: psycopg.Connection[Any], spec: KeySpec) -> Implementation:
    """Inspect the catalog for one table; raise TableNotFoundError when it is missing."""
    version = server_version_num(conn)
    version_text = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    table = catalog.find_table(conn, spec.schema, spec.table)
    if table is None:
        raise TableNotFoundError(f"table {spec.label} does not exist")
    oid = table["oid"]
    leaves = catalog.leaf_partitions(conn, oid) if table["relkind"] == "p" else []
    columns = catalog.columns(conn, oid)
    trigger_rows = catalog.triggers(conn, oid, [oid, *[leaf["oid"] for leaf in leaves]])
    check_rows = catalog.check_constraints(conn, oid)
    primary_key = catalog.primary_key(conn, oid)

    key_column = next((c for c in columns if c["attname"] == spec.key_column), None)
    partitions = tuple(
        PartitionInfo(name=leaf["relname"], oid=leaf["oid"], is_default=bool(leaf["is_default"])) for leaf in leaves
    )
    shape, by_key = _shape(table, key_column)
    triggers_found = _key_triggers(trigger_rows, spec)
    checks_found = tuple(
        CheckInfo(
            name=row["conname"],
            definition=row["definition"],
            validated=bool(row["convalidated"]),
            overflows=count_overflows(row["expression"], "SELECT {}") > 0,
        )
        for row in check_rows
        if mentions(row["expression"], spec.key_column)
    )
    generated_kind: Literal["stored", "virtual"] | None = None
    generated_expression = None
    if key_column is not None and key_column["attgenerated"] in ("s", "v"):
        generated_kind = "stored" if key_column["attgenerated"] == "s" else "virtual"
        generated_expression = key_column["default_expr"]

    location, enabled, missing = _trigger_placement(triggers_found, partitions, table["relkind"] == "p")
    method = _method(shape, generated_kind, triggers_found, checks_found)
    # key_expression: auto compares the table's places with each other; anything else is compared too.
    formulas = table_formulas(conn, spec, configured=None if spec.auto else spec.key_formula)
    overflow = _overflows(triggers_found, checks_found, generated_expression, table["partkeydef"], formulas)
    optimal, reason = judge(version, shape, by_key, method, generated_kind, enabled, overflow, bool(missing))
    return Implementation(
        server_version_num=version,
        server_version=version_text,
        table=spec.label,
        shape=shape,
        partition_key=table["partkeydef"],
        partitioned_by_key_column=by_key,
        partitions=partitions,
        has_default_partition=bool(table["partdefid"]),
        key_column_exists=key_column is not None,
        column_count=len(columns),
        generated_kind=generated_kind,
        generated_expression=generated_expression,
        triggers=triggers_found,
        trigger_location=location,
        trigger_enabled=enabled,
        partitions_missing_trigger=missing,
        checks=checks_found,
        method=method,
        formula_overflow=overflow,
        optimal=optimal,
        reason=reason,
        primary_key=primary_key,
        formulas=formulas,
        schema_overflows=tuple(schema_overflows(conn, spec.schema)),
    )


def _overflows(
    triggers: tuple[TriggerInfo, ...],
    checks: tuple[CheckInfo, ...],
    generated_expression: str | None,
    partkeydef: str | None,
    formulas: TableFormulas | None,
) -> bool:
    """True when any place holding the key formula, parsed, takes abs() of a bare hashtext() before the modulo."""
    if any(t.overflows for t in triggers) or any(c.overflows for c in checks):
        return True
    if generated_expression and count_overflows(generated_expression, "SELECT {}"):
        return True
    if partkeydef and count_overflows(partkeydef, "CREATE TABLE partkey_probe () PARTITION BY {}"):
        return True
    # Key helper functions tied to this table (the application asks them for the key it sends).
    places = formulas.places if formulas is not None else ()
    return any(p.kind == "helper" and p.formula is not None and p.formula.overflows for p in places)


def _shape(table: dict[str, Any], key_column: dict[str, Any] | None) -> tuple[Shape, bool]:
    """The table's shape, and whether it is partitioned by the key column itself."""
    if table["relkind"] != "p":
        return "plain", False
    attrs = [int(a) for a in str(table["partattrs"]).split()]
    if 0 in attrs:
        return "expression", False
    by_key = key_column is not None and attrs == [key_column["attnum"]]
    strategy: dict[str, Shape] = {"l": "list", "h": "hash", "r": "range"}
    return strategy[table["partstrat"]], by_key


def _key_triggers(rows: list[dict[str, Any]], spec: KeySpec) -> tuple[TriggerInfo, ...]:
    """Row-level BEFORE INSERT triggers whose function computes the key column."""
    found = []
    # PG 11/12 hold one trigger per partition, all calling the same function: parse each body once.
    readings: dict[str, tuple[bool, int]] = {}
    for row in rows:
        tgtype = int(row["tgtype"])
        is_before_row_insert = tgtype & _TRIGGER_ROW and tgtype & _TRIGGER_BEFORE and tgtype & _TRIGGER_INSERT
        if not is_before_row_insert or row["lanname"] != "plpgsql":
            continue
        if row["definition"] not in readings:
            readings[row["definition"]] = trigger_key_use(row["definition"], spec.key_column)
        computes_key, overflows = readings[row["definition"]]
        if not computes_key:
            continue
        found.append(
            TriggerInfo(
                name=row["tgname"],
                relation=row["relname"],
                enabled=row["tgenabled"] != "D",
                function=row["proname"],
                on_parent=bool(row["on_parent"] or row["is_clone"]),
                overflows=overflows > 0,
            )
        )
    return tuple(found)


def _trigger_placement(
    triggers: tuple[TriggerInfo, ...], partitions: tuple[PartitionInfo, ...], partitioned: bool
) -> tuple[Literal["parent", "partitions"] | None, bool | None, tuple[str, ...]]:
    """Where the key trigger sits, whether every copy is enabled, and which partitions lack one."""
    if not triggers:
        return None, None, ()
    enabled = all(t.enabled for t in triggers)
    if not partitioned or any(t.on_parent for t in triggers):
        return "parent", enabled, ()
    covered = {t.relation for t in triggers}
    missing = tuple(p.name for p in partitions if p.name not in covered)
    return "partitions", enabled, missing


def _method(
    shape: Shape,
    generated_kind: str | None,
    triggers: tuple[TriggerInfo, ...],
    checks: tuple[CheckInfo, ...],
) -> Method:
    """The one mechanism that keeps the key right, by precedence."""
    if generated_kind:
        return "generated"
    if shape == "expression":
        return "expression"
    if shape == "hash":
        return "hash"
    if triggers:
        return "trigger"
    if checks:
        return "check"
    return "none"

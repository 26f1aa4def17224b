"""Read the catalog: server version, the table's shape and how its partition key is maintained."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row

from exporter.formula_catalog import OverflowPlace, TableFormulas, schema_overflows, table_formulas
from exporter.keyspec import KeySpec, formula_overflows, mentions_key_formula

Shape = Literal["missing", "plain", "list", "hash", "range", "expression"]
Method = Literal["generated", "trigger", "check", "expression", "hash", "none"]
METHODS: tuple[Method, ...] = ("generated", "trigger", "check", "expression", "hash", "none")

# pg_trigger.tgtype bits: ROW=1, BEFORE=2, INSERT=4, UPDATE=16.
_TRIGGER_ROW, _TRIGGER_BEFORE, _TRIGGER_INSERT = 1, 2, 4


class TableNotFoundError(LookupError):
    """The configured table does not exist on the target."""


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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


_TABLE_SQL = """
SELECT c.oid, c.relkind, n.nspname || '.' || c.relname AS label,
       pt.partstrat, pt.partattrs::text AS partattrs, pt.partdefid,
       CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END AS partkeydef
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_partitioned_table pt ON pt.partrelid = c.oid
WHERE n.nspname = %(schema)s AND c.relname = %(table)s AND c.relkind IN ('r', 'p')
"""

_LEAVES_SQL = """
WITH RECURSIVE tree(relid) AS (
    SELECT inhrelid FROM pg_inherits WHERE inhparent = %(oid)s
    UNION ALL
    SELECT i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.relid
)
SELECT c.oid, c.relname, c.relispartition,
       (SELECT pt.partdefid FROM pg_partitioned_table pt
         JOIN pg_inherits i ON i.inhparent = pt.partrelid AND i.inhrelid = c.oid) = c.oid AS is_default
FROM tree JOIN pg_class c ON c.oid = tree.relid
WHERE c.relkind = 'r'
ORDER BY c.relname
"""

_COLUMNS_SQL = """
SELECT a.attname, a.attnum, {generated} AS attgenerated,
       pg_get_expr(d.adbin, d.adrelid) AS default_expr
FROM pg_attribute a
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_TRIGGERS_SQL = """
SELECT t.tgname, c.relname, t.tgenabled, t.tgtype, t.tgrelid = %(oid)s AS on_parent,
       {parent_clone} AS is_clone, p.proname, p.prosrc
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_proc p ON p.oid = t.tgfoid
WHERE NOT t.tgisinternal AND t.tgrelid = ANY(%(oids)s)
ORDER BY c.relname, t.tgname
"""

_CHECKS_SQL = """
SELECT conname, pg_get_constraintdef(oid) AS definition, convalidated
FROM pg_constraint
WHERE conrelid = %(oid)s AND contype = 'c'
ORDER BY conname
"""

_PK_SQL = """
SELECT a.attname
FROM pg_index i
JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %(oid)s AND i.indisprimary
ORDER BY k.ord
"""


def verification_inputs(conn: psycopg.Connection[Any], spec: KeySpec) -> tuple[bool, tuple[str, ...]]:
    """Whether the key column exists, and the primary key columns: all a verification pass needs."""
    row = conn.execute(
        """SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = c.oid AND attname = %(key)s AND NOT attisdropped),
                  ARRAY(SELECT a.attname::text FROM pg_index i
                        JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
                        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                        WHERE i.indrelid = c.oid AND i.indisprimary ORDER BY k.ord)
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = %(schema)s AND c.relname = %(table)s AND c.relkind IN ('r', 'p')""",
        {"key": spec.key_column, "schema": spec.schema, "table": spec.table},
    ).fetchone()
    if row is None:
        raise TableNotFoundError(f"table {spec.label} does not exist")
    return bool(row[0]), tuple(row[1])


def detect(conn: psycopg.Connection[Any], spec: KeySpec) -> Implementation:
    """Inspect the catalog for one table; raise TableNotFoundError when it is missing."""
    version = server_version_num(conn)
    version_text = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    with conn.cursor(row_factory=dict_row) as cur:
        table = cur.execute(_TABLE_SQL, {"schema": spec.schema, "table": spec.table}).fetchone()
        if table is None:
            raise TableNotFoundError(f"table {spec.label} does not exist")
        oid = table["oid"]
        leaves: list[dict[str, Any]] = []
        if table["relkind"] == "p":
            leaves = list(cur.execute(_LEAVES_SQL, {"oid": oid}).fetchall())
        generated = "a.attgenerated" if version >= 120000 else "''::\"char\""
        columns = cur.execute(_COLUMNS_SQL.format(generated=generated), {"oid": oid}).fetchall()
        parent_clone = "t.tgparentid <> 0" if version >= 130000 else "false"
        oids = [oid, *[leaf["oid"] for leaf in leaves]]
        triggers = cur.execute(_TRIGGERS_SQL.format(parent_clone=parent_clone), {"oid": oid, "oids": oids})
        trigger_rows = triggers.fetchall()
        check_rows = cur.execute(_CHECKS_SQL, {"oid": oid}).fetchall()
        primary_key = tuple(row["attname"] for row in cur.execute(_PK_SQL, {"oid": oid}).fetchall())

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
            overflows=formula_overflows(row["definition"]),
        )
        for row in check_rows
        if mentions_key_formula(row["definition"], spec.key_column)
    )
    generated_kind: Literal["stored", "virtual"] | None = None
    generated_expression = None
    if key_column is not None and key_column["attgenerated"] in ("s", "v"):
        generated_kind = "stored" if key_column["attgenerated"] == "s" else "virtual"
        generated_expression = key_column["default_expr"]

    location, enabled, missing = _trigger_placement(triggers_found, partitions, table["relkind"] == "p")
    method = _method(shape, generated_kind, triggers_found, checks_found)
    overflow_sources = [t.overflows for t in triggers_found] + [c.overflows for c in checks_found]
    if generated_expression:
        overflow_sources.append(formula_overflows(generated_expression))
    if shape == "expression" and table["partkeydef"]:
        overflow_sources.append(formula_overflows(table["partkeydef"]))
    overflow = any(overflow_sources)
    optimal, reason = judge(version, shape, by_key, method, generated_kind, enabled, overflow, bool(missing))
    # key_expression: auto compares the table's places with each other; anything else is compared too.
    formulas = table_formulas(conn, spec, configured=None if spec.auto else spec.key_formula)
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
    for row in rows:
        tgtype = int(row["tgtype"])
        is_before_row_insert = tgtype & _TRIGGER_ROW and tgtype & _TRIGGER_BEFORE and tgtype & _TRIGGER_INSERT
        if not is_before_row_insert or not mentions_key_formula(row["prosrc"], spec.key_column):
            continue
        found.append(
            TriggerInfo(
                name=row["tgname"],
                relation=row["relname"],
                enabled=row["tgenabled"] != "D",
                function=row["proname"],
                on_parent=bool(row["on_parent"] or row["is_clone"]),
                overflows=formula_overflows(row["prosrc"]),
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
    """Whether the method is the best this version and shape allow, and why (docs/checks.md has the table)."""
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
    if shape == "plain":
        if method == "generated":
            if generated_kind == "virtual":
                return False, "a VIRTUAL generated column cannot be indexed or be in a key; use STORED"
            return True, "a STORED generated column computes the key on every write"
        if version < 120000:
            if method in ("trigger", "check"):
                return True, "PostgreSQL 11 has no GENERATED columns; a trigger or CHECK is the best it allows"
            return False, "nothing maintains the key; add a trigger or CHECK (PG 11 has no GENERATED columns)"
        if method == "check":
            return False, "a CHECK only rejects wrong keys; a STORED generated column computes them"
        if method == "trigger":
            return False, "a STORED generated column is faster and cannot drift on UPDATE (PG 12+)"
        return False, "nothing maintains the key; a STORED generated column would"
    if by_key:
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

"""A table's full write cost, read from the catalog, re-created as a scratch copy for --measure.

Read once (one short transaction, so the real table is not held while the rounds run): columns with their
defaults, identity and generated expressions; indexes; CHECK, PK, UNIQUE and EXCLUDE constraints; triggers;
partitions with their bounds and each partition's own indexes, constraints and triggers. Foreign keys are
left out, on purpose: adding one to the copy would take a SHARE ROW EXCLUSIVE lock on the referenced table,
blocking its writers for the whole measurement.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from exporter.pg.catalog import relation_tree


@dataclass(frozen=True)
class Column:
    """One column as CREATE TABLE would spell it."""

    name: str
    type: str
    not_null: bool
    default: str | None
    identity: str  # '', 'a' (ALWAYS) or 'd' (BY DEFAULT)
    generated: str  # '', 's' (STORED) or 'v' (VIRTUAL, PostgreSQL 18)
    collation: str | None

    @property
    def uses_sequence(self) -> bool:
        """Identity or serial: the application leaves it to the database."""
        return bool(self.identity) or bool(self.default and "nextval(" in self.default)


@dataclass(frozen=True)
class Trigger:
    """A trigger's CREATE TRIGGER text, and whether it is the key trigger being replaced."""

    name: str
    definition: str
    key: bool


@dataclass
class Relation:
    """Indexes, constraints and triggers defined on one relation itself (not inherited from the parent)."""

    name: str
    qualified: str
    bound: str = ""
    indexes: list[str] = field(default_factory=list)
    constraints: list[tuple[str, str, str]] = field(default_factory=list)  # (name, contype, definition)
    triggers: list[Trigger] = field(default_factory=list)


@dataclass
class TableDefinition:
    """Everything --measure copies, and what it left out."""

    schema: str
    columns: list[Column]
    partition_by: str | None
    parent: Relation
    partitions: list[Relation]
    foreign_keys: list[str]

    def summary(self, leaf_indexes: int) -> dict[str, int]:
        """Counts of what a copy carries, for the report; leaf_indexes is counted on the copy itself."""
        every = [self.parent, *self.partitions]
        return {
            "columns": len(self.columns),
            "defaults": sum(1 for c in self.columns if c.default and not c.uses_sequence and not c.generated),
            "generated": sum(1 for c in self.columns if c.generated),
            "sequences": sum(1 for c in self.columns if c.uses_sequence),
            "partitions": len(self.partitions),
            "leaf_indexes": leaf_indexes,
            "checks": sum(sum(1 for c in r.constraints if c[1] == "c") for r in every),
            "triggers": sum(1 for r in every for t in r.triggers if not t.key),
            "foreign_keys_left_out": len(self.foreign_keys),
        }

    def describe(self, leaf_indexes: int) -> str:
        """One sentence: what a copy carries (the key trigger or CHECK being replaced aside)."""
        s = self.summary(leaf_indexes)
        where = f"on its {s['partitions']} partitions" if s["partitions"] else "on the table"
        fks = (
            f"; {s['foreign_keys_left_out']} foreign key(s) left out: on the copy they would lock the referenced "
            "table against writes while the rounds run"
            if s["foreign_keys_left_out"]
            else "; no foreign keys"
        )
        return (
            f"copied: {s['columns']} columns ({s['defaults']} defaults, {s['generated']} generated, "
            f"{s['sequences']} identity/sequence), {s['leaf_indexes']} indexes {where}, "
            f"{s['checks']} CHECKs, {s['triggers']} other triggers{fks}"
        )


def _relation(conn: psycopg.Connection[Any], oid: int, key_functions: set[tuple[str, str]], major: int) -> Relation:
    """One relation's own indexes, constraints and triggers (not the ones its parent gives it)."""
    with conn.cursor(row_factory=dict_row) as cur:
        head = cur.execute(
            "SELECT c.relname, quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS qualified, "
            "coalesce(pg_get_expr(c.relpartbound, c.oid), '') AS bound "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s",
            (oid,),
        ).fetchone()
        assert head is not None
        relation = Relation(name=head["relname"], qualified=head["qualified"], bound=head["bound"])
        # NOT NULL (PG 18 lists them as 'n') comes with the column; FKs are left out; constraint triggers are triggers.
        for row in cur.execute(
            "SELECT conname, contype, pg_get_constraintdef(oid) AS def FROM pg_constraint "
            "WHERE conrelid = %s AND conislocal AND coninhcount = 0 AND contype IN ('c', 'p', 'u', 'x') "
            "ORDER BY contype DESC, conname",
            (oid,),
        ):
            relation.constraints.append((row["conname"], row["contype"], row["def"]))
        for row in cur.execute(
            "SELECT pg_get_indexdef(x.indexrelid) AS def FROM pg_index x "
            "WHERE x.indrelid = %s AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = x.indexrelid) "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid AND c.conrelid = %s) "
            "ORDER BY x.indexrelid",
            (oid, oid),
        ):
            relation.indexes.append(row["def"])
        clone = "t.tgparentid = 0" if major >= 13 else "true"
        for row in cur.execute(
            sql.SQL(
                "SELECT t.tgname, pg_get_triggerdef(t.oid) AS def, pn.nspname AS fschema, p.proname "
                "FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_namespace pn ON pn.oid = p.pronamespace "
                "WHERE t.tgrelid = %s AND NOT t.tgisinternal AND {} ORDER BY t.tgname"
            ).format(sql.SQL(clone)),
            (oid,),
        ):
            relation.triggers.append(
                Trigger(row["tgname"], row["def"], (row["fschema"], row["proname"]) in key_functions)
            )
    return relation


def read_definition(
    conn: psycopg.Connection[Any], oid: int, key_functions: set[tuple[str, str]], major: int
) -> TableDefinition:
    """The table's definition from the catalog; key_functions marks the key trigger(s) a variant may drop."""
    generated = "a.attgenerated" if major >= 12 else "''"
    with conn.cursor(row_factory=dict_row) as cur:
        columns = [
            Column(
                name=r["attname"],
                type=r["type"],
                not_null=bool(r["attnotnull"]),
                default=r["def"],
                identity=r["attidentity"],
                generated=r["gen"],
                collation=r["coll"],
            )
            for r in cur.execute(
                sql.SQL(
                    "SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull, "
                    "pg_get_expr(d.adbin, d.adrelid) AS def, a.attidentity::text, {}::text AS gen, "
                    "CASE WHEN a.attcollation <> t.typcollation THEN quote_ident(co.collname) END AS coll "
                    "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
                    "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
                    "LEFT JOIN pg_collation co ON co.oid = a.attcollation "
                    "WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
                ).format(sql.SQL(generated)),
                (oid,),
            )
        ]
        head = cur.execute(
            "SELECT n.nspname, CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END AS partition_by "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s",
            (oid,),
        ).fetchone()
        assert head is not None
        foreign_keys = [
            str(r["conname"])
            for r in cur.execute("SELECT conname FROM pg_constraint WHERE conrelid = %s AND contype = 'f'", (oid,))
        ]
        leaves = [
            int(r["relid"])
            for r in cur.execute(
                relation_tree("%s::oid") + "SELECT tree.relid FROM tree JOIN pg_class c ON c.oid = tree.relid "
                "WHERE c.relkind = 'r' AND tree.relid <> %s ORDER BY c.relname",
                (oid, oid),
            )
        ]
    return TableDefinition(
        schema=head["nspname"],
        columns=columns,
        partition_by=head["partition_by"],
        parent=_relation(conn, oid, key_functions, major),
        partitions=[_relation(conn, leaf, key_functions, major) for leaf in leaves],
        foreign_keys=foreign_keys,
    )


@dataclass(frozen=True)
class Changes:
    """How a variant differs from the copied table: the key trigger and key CHECKs kept or not, the key generated."""

    key_triggers: bool = True
    key_checks: tuple[str, ...] = ()  # names of key CHECKs to leave out
    generated_key: tuple[str, str] | None = None  # (column, SQL expression): the key becomes GENERATED ... STORED


def _retarget(definition: str, kind: str, name: str, old: str, new: str) -> str:
    """pg_get_indexdef/pg_get_triggerdef text with a new object name, on the copy instead of the original."""
    pattern = rf'^(CREATE (?:UNIQUE |CONSTRAINT )?{kind}) ("(?:[^"]|"")+"|\S+)( (?:.*? )?ON )(ONLY )?{re.escape(old)} '
    text, count = re.subn(pattern, lambda m: f"{m.group(1)} {name}{m.group(3)}{new} ", definition, count=1)
    if count != 1:
        raise ValueError(f"cannot re-target {kind.lower()} definition {definition!r} from {old} to {new}")
    return text


def _column_sql(column: Column, sequences: dict[str, str], changes: Changes) -> str:
    """A column definition for CREATE TABLE; serial defaults use the copy's own sequence, never the real one."""
    parts = [_ident(column.name), column.type]
    if column.collation:
        parts.append(f"COLLATE {column.collation}")
    if changes.generated_key and column.name == changes.generated_key[0]:
        parts.append(f"GENERATED ALWAYS AS ({changes.generated_key[1]}) STORED")
    elif column.generated:
        parts.append(f"GENERATED ALWAYS AS ({column.default}) {'VIRTUAL' if column.generated == 'v' else 'STORED'}")
    elif column.identity:
        parts.append(f"GENERATED {'ALWAYS' if column.identity == 'a' else 'BY DEFAULT'} AS IDENTITY")
    elif column.name in sequences:
        parts.append(f"DEFAULT nextval('{sequences[column.name]}'::regclass)")
    elif column.default is not None:
        parts.append(f"DEFAULT {column.default}")
    if column.not_null:
        parts.append("NOT NULL")
    return " ".join(parts)


def _ident(name: str) -> str:
    """A double-quoted identifier."""
    return '"' + name.replace('"', '""') + '"'


def create_copy(conn: psycopg.Connection[Any], table: TableDefinition, name: str, changes: Changes) -> None:
    """Create the scratch copy `name` (and its partitions, name_p0 ...) with the variant's changes applied."""
    schema = _ident(table.schema)
    target = f"{schema}.{_ident(name)}"
    sequences: dict[str, str] = {}
    for number, column in enumerate(c for c in table.columns if c.uses_sequence and not c.identity):
        sequences[column.name] = f"{schema}.{_ident(f'{name}_seq{number}')}"
        conn.execute(f"CREATE SEQUENCE {sequences[column.name]}")
    columns = ", ".join(_column_sql(c, sequences, changes) for c in table.columns)
    partition_by = f" PARTITION BY {table.partition_by}" if table.partition_by else ""
    conn.execute(f"CREATE TABLE {target} ({columns}){partition_by}")
    counter = iter(range(1_000_000))
    for number, part in enumerate(table.partitions):
        conn.execute(f"CREATE TABLE {schema}.{_ident(f'{name}_p{number}')} PARTITION OF {target} {part.bound}")
    # Parent objects first: on a partitioned copy they cascade to the partitions, as on the real table.
    relations = [
        (table.parent, target),
        *((p, f"{schema}.{_ident(f'{name}_p{n}')}") for n, p in enumerate(table.partitions)),
    ]
    for relation, copy in relations:
        for constraint, contype, definition in relation.constraints:
            if contype == "c" and constraint in changes.key_checks:
                continue
            conn.execute(f"ALTER TABLE {copy} ADD CONSTRAINT {_ident(f'{name}_c{next(counter)}')} {definition}")
        for definition in relation.indexes:
            index = _ident(f"{name}_i{next(counter)}")
            conn.execute(_retarget(definition, "INDEX", index, relation.qualified, copy))
        for trigger in relation.triggers:
            if trigger.key and not changes.key_triggers:
                continue
            conn.execute(_retarget(trigger.definition, "TRIGGER", _ident(trigger.name), relation.qualified, copy))

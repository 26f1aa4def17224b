"""Catalog reads only the migration needs (what DROP COLUMN removes, sizes); shared ones are in exporter.pg.catalog."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg import sql

from exporter.introspect import Implementation
from exporter.keyspec import KeySpec
from exporter.pg import catalog as pg_catalog

BYTES_PER_ROW_GUESS = 400  # the facts' table: 394 bytes a row; used before any ANALYZE or VACUUM


@dataclass(frozen=True)
class Dependent:
    """A PK, UNIQUE/EXCLUDE constraint or index that DROP COLUMN of the key would silently remove."""

    name: str
    kind: str  # 'constraint' or 'index'
    definition: str  # pg_get_constraintdef for constraints, pg_get_indexdef for indexes

    def recreate(self, table: sql.Identifier) -> sql.Composed:
        """The statement that re-creates it exactly as the catalog described it."""
        if self.kind == "constraint":
            # The definition text comes from pg_get_constraintdef, so it is valid SQL as it stands.
            return sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                table, sql.Identifier(self.name), sql.SQL(self.definition)
            )
        return sql.Composed([sql.SQL(self.definition)])


@dataclass(frozen=True)
class KeyTrigger:
    """One key trigger as the catalog has it, enough to drop it and to put it back."""

    name: str
    schema: str
    relation: str
    function_schema: str
    function_name: str
    on_parent: bool


@dataclass(frozen=True)
class TableSize:
    """Bytes and estimated rows across all leaf relations."""

    heap_bytes: int
    total_bytes: int
    rows: int
    index_count: int
    speed: float = 1.0  # the server's time over the built-in rates' time, as migrations.probe measured it now
    probe: str = ""  # what that measurement was, for plan's basis line
    speed_measured: bool = False  # whether speed is that measurement (else the built-in rates' 1.0)


def table_oid(conn: psycopg.Connection[Any], spec: KeySpec) -> int:
    """The table's OID."""
    return pg_catalog.table_oid(conn, spec.table_ident)


def column_number(conn: psycopg.Connection[Any], oid: int, column: str) -> int | None:
    """attnum of a live column, or None."""
    row = conn.execute(
        "SELECT attnum FROM pg_attribute WHERE attrelid = %s AND attname = %s AND attnum > 0 AND NOT attisdropped",
        (oid, column),
    ).fetchone()
    return int(row[0]) if row else None


def column_ordinal(conn: psycopg.Connection[Any], oid: int, column: str) -> tuple[int | None, int]:
    """The column's position as SELECT * shows it (attnum counts dropped columns too), and the count."""
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (oid,),
    ).fetchall()
    names = [r[0] for r in rows]
    return (names.index(column) + 1 if column in names else None), len(names)


def key_dependents(conn: psycopg.Connection[Any], spec: KeySpec, column: str | None = None) -> list[Dependent]:
    """Constraints and indexes on the table that use the column: exactly what DROP COLUMN removes."""
    oid = table_oid(conn, spec)
    attnum = column_number(conn, oid, column or spec.key_column)
    if attnum is None:
        return []
    rows = conn.execute(
        """SELECT DISTINCT 'constraint' AS kind, c.conname AS name, pg_get_constraintdef(c.oid) AS definition,
                  c.contype = 'p' AS is_pk
           FROM pg_depend d JOIN pg_constraint c ON d.classid = 'pg_constraint'::regclass AND c.oid = d.objid
           WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = %(oid)s AND d.refobjsubid = %(att)s
             AND c.conrelid = %(oid)s
           UNION
           SELECT DISTINCT 'index', i.relname, pg_get_indexdef(i.oid), false
           FROM pg_depend d JOIN pg_class i ON d.classid = 'pg_class'::regclass AND i.oid = d.objid
           JOIN pg_index x ON x.indexrelid = i.oid
           WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = %(oid)s AND d.refobjsubid = %(att)s
             AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.oid AND c.conrelid = %(oid)s)
           ORDER BY 4 DESC, 1, 2""",
        {"oid": oid, "att": attnum},
    ).fetchall()
    return [Dependent(name=r[1], kind=r[0], definition=r[2]) for r in rows]


def index_definitions(conn: psycopg.Connection[Any], spec: KeySpec) -> dict[str, str]:
    """Every index on the table (not its partitions), by name: the catalog's own CREATE INDEX text."""
    return pg_catalog.index_definitions(conn, table_oid(conn, spec))


def constraint_definitions(conn: psycopg.Connection[Any], spec: KeySpec) -> dict[str, str]:
    """Every constraint on the table, by name, as pg_get_constraintdef prints it."""
    return pg_catalog.constraint_definitions(conn, table_oid(conn, spec))


def key_triggers(conn: psycopg.Connection[Any], spec: KeySpec, impl: Implementation) -> list[KeyTrigger]:
    """The key triggers detect() found, with their functions' schemas; clones of a parent trigger left out."""
    wanted = {(t.relation, t.name) for t in impl.triggers}
    oid = table_oid(conn, spec)
    rows = pg_catalog.triggers(conn, oid, [oid, *[p.oid for p in impl.partitions]])
    return [
        KeyTrigger(
            name=r["tgname"],
            schema=r["nspname"],
            relation=r["relname"],
            function_schema=r["fschema"],
            function_name=r["proname"],
            on_parent=bool(r["on_parent"]),
        )
        for r in rows
        if (r["relname"], r["tgname"]) in wanted and not r["is_clone"]
    ]


def table_size(conn: psycopg.Connection[Any], spec: KeySpec) -> TableSize:
    """Sizes summed over the table and all its partitions now, and the rows they hold now (estimated)."""
    row = conn.execute(
        """WITH RECURSIVE tree(relid) AS (
               SELECT %(oid)s::oid
               UNION ALL SELECT i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.relid)
           SELECT coalesce(sum(pg_table_size(c.oid)) FILTER (WHERE c.relkind = 'r'), 0),
                  coalesce(sum(pg_total_relation_size(c.oid)) FILTER (WHERE c.relkind = 'r'), 0),
                  -- Rows now: the pages the heap has now (pg_relation_size) times the rows per page the last
                  -- ANALYZE or VACUUM saw; reltuples alone goes stale as the table grows.
                  coalesce(sum(CASE WHEN c.relpages > 0 AND c.reltuples > 0
                                    THEN c.reltuples / c.relpages * pg_relation_size(c.oid)
                                         / current_setting('block_size')::int
                                    ELSE pg_relation_size(c.oid) / %(guess)s END)
                           FILTER (WHERE c.relkind = 'r'), 0),
                  (SELECT count(*) FROM pg_index WHERE indrelid = %(oid)s)
           FROM tree JOIN pg_class c ON c.oid = tree.relid""",
        {"oid": table_oid(conn, spec), "guess": BYTES_PER_ROW_GUESS},
    ).fetchone()
    assert row is not None
    return TableSize(heap_bytes=int(row[0]), total_bytes=int(row[1]), rows=int(row[2]), index_count=int(row[3]))


def as_json(items: list[Any]) -> list[dict[str, Any]]:
    """Dataclasses as JSON-ready dictionaries, for the state table."""
    return [asdict(item) for item in items]

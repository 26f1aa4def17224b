"""Catalog reads both tools share: the table, its leaf partitions, columns, primary key, triggers, constraints, indexes.

Rows come back as the catalog has them (dictionaries or plain values); what they mean for the key is decided by
exporter.introspect (the exporter's implementation check) and migrations (what a plan must drop or rebuild).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

_TABLE_SQL = """
SELECT c.oid, c.relkind, n.nspname || '.' || c.relname AS label,
       pt.partstrat, pt.partattrs::text AS partattrs, pt.partdefid,
       CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END AS partkeydef
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_partitioned_table pt ON pt.partrelid = c.oid
WHERE n.nspname = %(schema)s AND c.relname = %(table)s AND c.relkind IN ('r', 'p')
"""


def relation_tree(root: str) -> str:
    """`WITH RECURSIVE tree(relid, parent)`: the relation ROOT (an SQL expression for its oid) and all under it."""
    # One spelling of the walk down pg_inherits for every catalog read that needs a table's leaves; the root row's
    # parent is 0, so a caller that wants only what is under the table filters on `tree.parent <> 0`.
    return f"""WITH RECURSIVE tree(relid, parent) AS (
    SELECT {root}, 0::oid
    UNION ALL
    SELECT i.inhrelid, i.inhparent FROM pg_catalog.pg_inherits i JOIN tree t ON i.inhparent = t.relid
)
"""


_LEAVES_SQL = (
    relation_tree("%(oid)s::oid")
    + """SELECT c.oid, c.relname, c.relispartition,
       (SELECT pt.partdefid FROM pg_partitioned_table pt
         JOIN pg_inherits i ON i.inhparent = pt.partrelid AND i.inhrelid = c.oid) = c.oid AS is_default
FROM tree JOIN pg_class c ON c.oid = tree.relid
WHERE c.relkind = 'r' AND tree.parent <> 0
ORDER BY c.relname
"""
)

_COLUMNS_SQL = """
SELECT a.attname, a.attnum, {generated} AS attgenerated,
       pg_get_expr(d.adbin, d.adrelid) AS default_expr
FROM pg_attribute a
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

# Every user trigger on the table and its leaves, with the function it runs (its source and its schema).
_TRIGGERS_SQL = """
SELECT t.tgname, n.nspname, c.relname, t.tgenabled, t.tgtype, t.tgrelid = %(oid)s AS on_parent,
       {parent_clone} AS is_clone, pn.nspname AS fschema, p.proname, p.prosrc, l.lanname,
       pg_get_functiondef(p.oid) AS definition
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_proc p ON p.oid = t.tgfoid
JOIN pg_namespace pn ON pn.oid = p.pronamespace
JOIN pg_language l ON l.oid = p.prolang
WHERE NOT t.tgisinternal AND t.tgrelid = ANY(%(oids)s)
ORDER BY c.relname, t.tgname
"""

_CHECKS_SQL = """
SELECT conname, pg_get_constraintdef(oid) AS definition, pg_get_expr(conbin, conrelid) AS expression, convalidated
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


def find_table(conn: psycopg.Connection[Any], schema: str, table: str) -> dict[str, Any] | None:
    """The table's pg_class row with its partitioning (strategy, key columns, DEFAULT), or None when it is missing."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(_TABLE_SQL, {"schema": schema, "table": table}).fetchone()


def leaf_partitions(conn: psycopg.Connection[Any], oid: int) -> list[dict[str, Any]]:
    """Every leaf partition under the table, at any depth, by name: oid, relname, is_default."""
    with conn.cursor(row_factory=dict_row) as cur:
        return list(cur.execute(_LEAVES_SQL, {"oid": oid}).fetchall())


def columns(conn: psycopg.Connection[Any], oid: int) -> list[dict[str, Any]]:
    """The live columns in order: attname, attnum, attgenerated ('' before PG 12) and the default expression."""
    generated = "a.attgenerated" if conn.info.server_version >= 120000 else "''::\"char\""
    with conn.cursor(row_factory=dict_row) as cur:
        return list(cur.execute(_COLUMNS_SQL.format(generated=generated), {"oid": oid}).fetchall())


def triggers(conn: psycopg.Connection[Any], oid: int, oids: list[int]) -> list[dict[str, Any]]:
    """User triggers on the relations OIDS (the table OID and its leaves), with their functions' source, language,
    schema and pg_get_functiondef text (the formula parser reads PL/pgSQL from the whole definition)."""
    parent_clone = "t.tgparentid <> 0" if conn.info.server_version >= 130000 else "false"
    with conn.cursor(row_factory=dict_row) as cur:
        return list(cur.execute(_TRIGGERS_SQL.format(parent_clone=parent_clone), {"oid": oid, "oids": oids}))


def check_constraints(conn: psycopg.Connection[Any], oid: int) -> list[dict[str, Any]]:
    """The table's CHECK constraints: conname, definition, expression (pg_get_expr), convalidated."""
    with conn.cursor(row_factory=dict_row) as cur:
        return list(cur.execute(_CHECKS_SQL, {"oid": oid}).fetchall())


def primary_key(conn: psycopg.Connection[Any], oid: int) -> tuple[str, ...]:
    """The primary key's columns in key order; () when there is none."""
    return tuple(str(row[0]) for row in conn.execute(_PK_SQL, {"oid": oid}).fetchall())


def table_oid(conn: psycopg.Connection[Any], table: sql.Composable) -> int:
    """The OID of a table named by its (quoted) identifier."""
    row = conn.execute("SELECT %s::regclass::oid", (table.as_string(conn),)).fetchone()
    assert row is not None
    return int(row[0])


def index_definitions(conn: psycopg.Connection[Any], oid: int) -> dict[str, str]:
    """Every index on the table (not its partitions), by name: the catalog's own CREATE INDEX text."""
    rows = conn.execute(
        "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
        "WHERE x.indrelid = %s ORDER BY 1",
        (oid,),
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def constraint_definitions(conn: psycopg.Connection[Any], oid: int) -> dict[str, str]:
    """Every constraint on the table, by name, as pg_get_constraintdef prints it."""
    rows = conn.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s ORDER BY 1", (oid,)
    ).fetchall()
    return {r[0]: r[1] for r in rows}

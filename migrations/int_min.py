"""Repair rows whose source hashes to INT_MIN on a LIST table whose legacy trigger overflows on them.

Moving such a row to its right partition is an INSERT there, which fires the legacy BEFORE INSERT trigger, whose
abs(hashtext(x)) raises `integer out of range`. Each row is fixed in its own short transaction that locks the
parent first (ROW EXCLUSIVE, what any UPDATE takes: DML's lock order), then disables the key trigger on the one
destination partition (SHARE ROW EXCLUSIVE on that partition only: writes to it wait a moment, reads and every
other partition go on), moves the row and enables the trigger again exactly as it was (ENABLE, ALWAYS or REPLICA).
Other sessions never see the trigger disabled: the catalog change and its undo commit together.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import sql

from exporter.introspect import Implementation
from migrations.options import Options
from migrations.sqlgen import safe_expression

INT_MIN = -(2**31)

# pg_trigger.tgenabled -> the ALTER TABLE clause that sets it back.
_ENABLE = {"O": "ENABLE TRIGGER", "A": "ENABLE ALWAYS TRIGGER", "R": "ENABLE REPLICA TRIGGER"}
_LIST_BOUND = re.compile(r"^FOR VALUES IN \((.*)\)$")


def overflow_filter(options: Options) -> sql.Composed:
    """SQL true for rows whose source does NOT hash to INT_MIN (the batch UPDATE leaves the others to fix_rows)."""
    return sql.SQL("hashtext({}::text) <> {}").format(sql.Identifier(options.spec.source_column), sql.Literal(INT_MIN))


def needs_care(impl: Implementation) -> bool:
    """True when moving an INT_MIN row would fire a key trigger: a LIST table with one."""
    return impl.shape == "list" and bool(impl.triggers)


def _destination(conn: psycopg.Connection[Any], options: Options, key: int) -> sql.Identifier:
    """The leaf partition a row with this key belongs in (the DEFAULT partition when no list holds it)."""
    rows = conn.execute(
        """SELECT n.nspname, c.relname, pg_get_expr(c.relpartbound, c.oid)
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE i.inhparent = %s::regclass""",
        (options.spec.table_ident.as_string(conn),),
    ).fetchall()
    default = None
    for schema, name, bound in rows:
        if bound == "DEFAULT":
            default = sql.Identifier(schema, name)
            continue
        match = _LIST_BOUND.match(bound or "")
        values = [v.strip().strip("'") for v in match.group(1).split(",")] if match else []
        if str(key) in values:
            return sql.Identifier(schema, name)
    if default is None:
        raise psycopg.errors.CheckViolation(f"no partition of {options.spec.label} for key {key}")
    return default


def _key_triggers_on(conn: psycopg.Connection[Any], relation: sql.Identifier, names: set[str]) -> list[tuple[str, str]]:
    """(name, tgenabled) of the key triggers on one relation that are not disabled."""
    # No `NOT tgisinternal`: PG 13/14 mark the partitions' clones of a parent trigger internal (15+ do not), and
    # the name already tells the key trigger from the foreign-key ones. Disabling such a clone on 13/14 takes a
    # superuser ("is a system trigger" otherwise).
    rows = conn.execute(
        "SELECT tgname, tgenabled::text FROM pg_trigger WHERE tgrelid = %s::regclass", (relation.as_string(conn),)
    ).fetchall()
    return [(name, enabled) for name, enabled in rows if name in names and enabled in _ENABLE]


def fix_rows(conn: psycopg.Connection[Any], options: Options, impl: Implementation, leaf: sql.Identifier) -> int:
    """Fix this leaf's wrong-keyed INT_MIN rows, each with the key trigger off on its destination only (in a tx)."""
    spec = options.spec
    key, expr = sql.Identifier(spec.key_column), safe_expression(spec)
    rows = conn.execute(
        sql.SQL(
            "SELECT ctid::text, {expr} FROM ONLY {leaf} WHERE {key} IS DISTINCT FROM {expr} "
            "AND hashtext({src}::text) = {int_min}"
        ).format(expr=expr, leaf=leaf, key=key, src=sql.Identifier(spec.source_column), int_min=sql.Literal(INT_MIN))
    ).fetchall()
    names = {t.name for t in impl.triggers}
    fixed = 0
    for ctid, right_key in rows:
        # DML's lock order: the parent first, then the one partition whose trigger is switched off.
        conn.execute(sql.SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE").format(spec.table_ident))
        destination = _destination(conn, options, int(right_key))
        triggers = _key_triggers_on(conn, destination, names)
        for name, _ in triggers:
            conn.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER {}").format(destination, sql.Identifier(name)))
        fixed += conn.execute(
            sql.SQL(
                "UPDATE {table} SET {key} = {expr} WHERE tableoid = {leaf}::regclass AND ctid = {ctid}::tid"
            ).format(
                table=spec.table_ident,
                key=key,
                expr=expr,
                leaf=sql.Literal(leaf.as_string(conn)),
                ctid=sql.Literal(ctid),
            )
        ).rowcount
        for name, enabled in triggers:
            conn.execute(
                sql.SQL("ALTER TABLE {} {} {}").format(destination, sql.SQL(_ENABLE[enabled]), sql.Identifier(name))
            )
    return fixed

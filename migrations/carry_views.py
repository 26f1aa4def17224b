"""Views and materialized views on the key column: dropped in the swap and re-created exactly, after the rename.

Each comes back with its definition (pg_get_viewdef, names qualified), options (security_barrier, check_option,
security_invoker, storage parameters), tablespace, owner, privileges with their grantors, column privileges and
comments; a materialized view also with its indexes, and REFRESHed when it held data. A view that anything else
depends on (another view, a trigger, a rule, a column default) is refused, naming what depends on it.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from migrations.column_dependent import ColumnDependent, Statement, comment, qualified, qualified_names, refused
from migrations.grants import column_acl, grant_statements, read_acl, relation_owner


def _option(text: str) -> sql.Composed:
    """One reloptions entry, name=value, as a WITH (...) item."""
    name, _, value = text.partition("=")
    return sql.SQL("{} = {}").format(sql.Identifier(name), sql.Literal(value))


def _blockers(conn: psycopg.Connection[Any], oid: int) -> list[str]:
    """What else depends on the view, besides its own query rule and a materialized view's indexes."""
    rows = conn.execute(
        """SELECT DISTINCT pg_describe_object(d.classid, d.objid, d.objsubid) FROM pg_depend d
           WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = %(v)s AND d.deptype IN ('n', 'a')
             AND NOT (d.classid = 'pg_class'::regclass
                      AND d.objid IN (SELECT indexrelid FROM pg_index WHERE indrelid = %(v)s))
             AND NOT (d.classid = 'pg_rewrite'::regclass
                      AND d.objid IN (SELECT oid FROM pg_rewrite WHERE ev_class = %(v)s AND rulename = '_RETURN'))
           ORDER BY 1""",
        {"v": oid},
    ).fetchall()
    return [str(r[0]).removeprefix("rule _RETURN on ") for r in rows]  # a view's query rule: name the view


def carry(conn: psycopg.Connection[Any], oid: int) -> ColumnDependent:
    """The view or materialized view `oid`, carried across the swap, or refused naming what depends on it."""
    with qualified_names(conn):
        row = conn.execute(
            """SELECT n.nspname, c.relname, c.relkind::text, c.reloptions, c.relacl IS NOT NULL,
                      t.spcname, c.relispopulated, pg_get_viewdef(c.oid), obj_description(c.oid, 'pg_class')
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace WHERE c.oid = %s""",
            (oid,),
        ).fetchone()
        assert row is not None
        schema, name, relkind, options, has_acl, tablespace, populated, definition, remark = row
        owner = relation_owner(conn, oid)
        indexes = conn.execute(
            "SELECT pg_get_indexdef(x.indexrelid), obj_description(x.indexrelid, 'pg_class'), i.relname "
            "FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = %s ORDER BY i.relname",
            (oid,),
        ).fetchall()
    matview = relkind == "m"
    kind = "materialized view" if matview else "view"
    label = f"{kind} {schema}.{name}" if schema != "public" else f"{kind} {name}"
    blockers = _blockers(conn, oid)
    if blockers:
        return refused(
            kind,
            label,
            f"{', '.join(blockers)} {'depends' if len(blockers) == 1 else 'depend'} on it; chains of views, and "
            "triggers or rules on a view, are not carried",
        )
    target = qualified(schema, name)
    word = "MATERIALIZED VIEW" if matview else "VIEW"
    keyword = sql.SQL(word)
    body = sql.SQL(str(definition).strip().rstrip(";"))
    with_options = (
        sql.SQL(" WITH ({})").format(sql.SQL(", ").join(_option(o) for o in options)) if options else sql.SQL("")
    )
    statements: list[Statement] = []
    if matview:
        space = sql.SQL(" TABLESPACE {}").format(sql.Identifier(tablespace)) if tablespace else sql.SQL("")
        statements.append(
            sql.SQL("CREATE MATERIALIZED VIEW {}{}{} AS {} WITH NO DATA").format(target, with_options, space, body)
        )
    else:
        statements.append(sql.SQL("CREATE VIEW {}{} AS {}").format(target, with_options, body))
    statements.append(sql.SQL("ALTER {} {} OWNER TO {}").format(keyword, target, sql.Identifier(owner)))
    for index_definition, index_comment, index_name in indexes:
        statements.append(sql.SQL(index_definition))
        statements += comment("INDEX", qualified(schema, index_name), index_comment)
    if matview and populated:
        statements.append(sql.SQL("REFRESH MATERIALIZED VIEW {}").format(target))  # runs the query as the owner
    lost: list[str] = []
    if has_acl:
        # Exactly the catalog's list: the owner's own entries too (REVOKE first drops the default ones).
        statements.append(sql.SQL("REVOKE ALL ON {} FROM {}").format(target, sql.Identifier(owner)))
        grants, lost = grant_statements(
            conn, read_acl(conn, sql.SQL("SELECT relacl FROM pg_class WHERE oid = %s"), (oid,)), owner, target
        )
        statements += grants
    columns = conn.execute(
        "SELECT attname, attnum, col_description(attrelid, attnum), attacl IS NOT NULL FROM pg_attribute "
        "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (oid,),
    ).fetchall()
    for column, attnum, column_comment, has_column_acl in columns:
        if has_column_acl:
            grants, also_lost = grant_statements(conn, column_acl(conn, oid, attnum), owner, target, column)
            statements += grants
            lost += also_lost
        statements += comment("COLUMN", sql.Identifier(schema, name, column), column_comment)
    statements += comment(word, target, remark)
    action = "dropped and re-created in the swap's transaction (definition, options, owner, grants, comments"
    if matview:
        action += ", indexes" + ("; REFRESHed: the swap runs its query" if populated else "; left WITH NO DATA")
    action += ")"
    if lost:
        action += f"; grants by {', '.join(sorted(set(lost)))} are recorded as granted by the migrating role"
    return ColumnDependent(
        kind,
        label,
        True,
        action,
        tuple(statements),
        (sql.SQL("DROP {} {}").format(keyword, target),),
        scans=1 if matview and populated else 0,
    )

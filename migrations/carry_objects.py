"""Row-level security policies, extended statistics and publication entries on the key column: dropped in the
swap before DROP COLUMN and re-created after the rename, exactly as the catalog had them."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from exporter.keyspec import KeySpec
from migrations.catalog import table_oid
from migrations.column_dependent import ColumnDependent, Statement, comment, qualified, qualified_names, refused

_COMMANDS = {"*": "ALL", "r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE"}


def policy(conn: psycopg.Connection[Any], spec: KeySpec, oid: int) -> ColumnDependent:
    """CREATE POLICY again with its command, PERMISSIVE/RESTRICTIVE, roles, USING, WITH CHECK and comment."""
    with qualified_names(conn):
        row = conn.execute(
            """SELECT p.polname, p.polcmd::text, p.polpermissive,
                      ARRAY(SELECT COALESCE((SELECT rolname FROM pg_roles WHERE oid = r), '')
                            FROM unnest(p.polroles) r),
                      pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid),
                      obj_description(p.oid, 'pg_policy')
               FROM pg_policy p WHERE p.oid = %s""",
            (oid,),
        ).fetchone()
    assert row is not None
    name, command, permissive, roles, using, check, remark = row
    to = sql.SQL(", ").join(sql.Identifier(r) if r else sql.SQL("PUBLIC") for r in roles)
    create = sql.SQL("CREATE POLICY {} ON {} AS {} FOR {} TO {}").format(
        sql.Identifier(name),
        spec.table_ident,
        sql.SQL("PERMISSIVE" if permissive else "RESTRICTIVE"),
        sql.SQL(_COMMANDS[command]),
        to,
    )
    if using is not None:
        create += sql.SQL(" USING ({})").format(sql.SQL(using))
    if check is not None:
        create += sql.SQL(" WITH CHECK ({})").format(sql.SQL(check))
    on = sql.SQL("{} ON {}").format(sql.Identifier(name), spec.table_ident)
    return ColumnDependent(
        "policy",
        f"policy {name} on table {spec.table}",
        True,
        "dropped and re-created in the swap's transaction (command, roles, USING, WITH CHECK, comment): "
        "row-level security never lapses",
        (create, *comment("POLICY", on, remark)),
        (sql.SQL("DROP POLICY {}").format(on),),
    )


def statistics(conn: psycopg.Connection[Any], oid: int) -> ColumnDependent:
    """CREATE STATISTICS again (pg_get_statisticsobjdef) with its owner, statistics target and comment."""
    target_column = "s.stxstattarget" if conn.info.server_version >= 130000 else "NULL::int"
    with qualified_names(conn):
        row = conn.execute(
            f"""SELECT n.nspname, s.stxname, r.rolname, pg_get_statisticsobjdef(s.oid), {target_column},
                       obj_description(s.oid, 'pg_statistic_ext')
                FROM pg_statistic_ext s JOIN pg_namespace n ON n.oid = s.stxnamespace
                JOIN pg_roles r ON r.oid = s.stxowner WHERE s.oid = %s""",
            (oid,),
        ).fetchone()
    assert row is not None
    schema, name, owner, definition, stattarget, remark = row
    target = qualified(schema, name)
    statements: list[Statement] = [
        sql.SQL(definition),
        sql.SQL("ALTER STATISTICS {} OWNER TO {}").format(target, sql.Identifier(owner)),
    ]
    if stattarget is not None and int(stattarget) >= 0:
        statements.append(sql.SQL("ALTER STATISTICS {} SET STATISTICS {}").format(target, sql.Literal(stattarget)))
    statements += comment("STATISTICS", target, remark)
    return ColumnDependent(
        "extended statistics",
        f"statistics object {schema}.{name}",
        True,
        "dropped and re-created in the swap's transaction (owner, target, comment); its data comes back with "
        "the next ANALYZE",
        tuple(statements),
        (sql.SQL("DROP STATISTICS {}").format(target),),
    )


def publication(conn: psycopg.Connection[Any], spec: KeySpec, oid: int) -> ColumnDependent:
    """The table's entry in a publication (PG 15+), with its column list and row filter."""
    with qualified_names(conn):
        row = conn.execute(
            """SELECT p.pubname,
                      CASE WHEN r.prattrs IS NULL THEN NULL ELSE ARRAY(
                          SELECT attname FROM pg_attribute WHERE attrelid = r.prrelid
                          AND attnum = ANY(r.prattrs::int2[]) ORDER BY attnum) END,
                      pg_get_expr(r.prqual, r.prrelid)
               FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid WHERE r.oid = %s""",
            (oid,),
        ).fetchone()
    assert row is not None
    name, columns, where = row
    generated = conn.execute(
        "SELECT attgenerated::text <> '' FROM pg_attribute WHERE attrelid = %s AND attname = %s",
        (table_oid(conn, spec), spec.key_column),
    ).fetchone()
    if (
        columns is not None
        and spec.key_column in columns
        and conn.info.server_version < 180000
        and generated == (False,)
    ):
        return refused(
            "publication column list",
            f"publication {name}: table {spec.table} ({', '.join(columns)})",
            "PostgreSQL 15-17 refuse a generated column in a publication column list (18 allows it); "
            f"take {spec.key_column} out of the list, or upgrade the server first",
        )
    add = sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(sql.Identifier(name), spec.table_ident)
    if columns is not None:
        add += sql.SQL(" ({})").format(sql.SQL(", ").join(sql.Identifier(c) for c in columns))
    if where is not None:
        add += sql.SQL(" WHERE ({})").format(sql.SQL(where))
    return ColumnDependent(
        "publication",
        f"publication {name}: table {spec.table}" + (f" ({', '.join(columns)})" if columns is not None else ""),
        True,
        "the table leaves and rejoins the publication in the swap's transaction, with its column list and row filter",
        (add,),
        (sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(sql.Identifier(name), spec.table_ident),),
    )


def publication_entries(conn: psycopg.Connection[Any], oid: int, attnum: int) -> list[int]:
    """pg_publication_rel rows of the table whose column list names the column (15+; pg_depend may lack them)."""
    if conn.info.server_version < 150000:
        return []
    rows = conn.execute(
        "SELECT oid FROM pg_publication_rel WHERE prrelid = %s AND prattrs IS NOT NULL "
        "AND %s = ANY(prattrs::int2[]) ORDER BY oid",
        (oid, attnum),
    ).fetchall()
    return [int(r[0]) for r in rows]

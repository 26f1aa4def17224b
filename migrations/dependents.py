"""What else depends on the key column, found before any change: carried across the swap, or refused up front.

DROP COLUMN in the swap removes (or is blocked by) everything that depends on the column. The plan already puts back
the table's own indexes and constraints (catalog.key_dependents). Here are the others:
- carried, in the swap's transaction, exactly as they were: column privileges (with their grantors), the column
  comment and statistics target (below); views and materialized views (carry_views); row-level security policies,
  extended statistics and publication entries (carry_objects);
- refused up front, before anything is rewritten, naming each: a view that another view, a trigger or a rule
  depends on, triggers and rules that name the column, and anything else pg_depend lists.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from exporter.keyspec import KeySpec
from migrations import carry_objects, carry_views
from migrations.catalog import column_number, table_oid
from migrations.column_dependent import ColumnDependent, Statement, refused
from migrations.grants import column_acl, grant_statements, relation_owner

__all__ = ["ColumnDependent", "drops", "find", "refusal"]

# pg_depend entries the plan handles itself: the table's own indexes and constraints, the column's generation
# expression or default, and the key triggers the swap drops.
_HANDLED = ("pg_constraint", "pg_attrdef")
_ORDER = {"materialized view": 0, "view": 1, "policy": 2, "extended statistics": 3, "publication": 4}


def find(
    conn: psycopg.Connection[Any], spec: KeySpec, column: str, key_triggers: set[str] | None = None
) -> list[ColumnDependent]:
    """Every dependent of spec's table column `column`; the statements re-apply the carried ones to spec.key_column."""
    oid = table_oid(conn, spec)
    attnum = column_number(conn, oid, column)
    if attnum is None:
        return []
    found = _recorded(conn, spec, oid, attnum, key_triggers or set())
    found += _carried(conn, spec, oid, attnum)
    return found


def drops(found: list[ColumnDependent]) -> list[Statement]:
    """What the swap runs before DROP COLUMN: the carried objects that would block it, dropped."""
    return [statement for dependent in found if dependent.carried for statement in dependent.drops]


def _recorded(
    conn: psycopg.Connection[Any], spec: KeySpec, oid: int, attnum: int, key_triggers: set[str]
) -> list[ColumnDependent]:
    """Objects recorded in pg_depend (and publication column lists): carried when we can, else refused."""
    rows = conn.execute(
        """SELECT DISTINCT d.classid::regclass::text, d.objid, pg_describe_object(d.classid, d.objid, 0),
                  CASE WHEN d.classid = 'pg_rewrite'::regclass THEN (
                      SELECT c.relkind::text FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
                      WHERE r.oid = d.objid) END,
                  CASE WHEN d.classid = 'pg_trigger'::regclass THEN (
                      SELECT tgname FROM pg_trigger WHERE oid = d.objid) END,
                  CASE WHEN d.classid = 'pg_rewrite'::regclass THEN (
                      SELECT r.ev_class FROM pg_rewrite r WHERE r.oid = d.objid AND r.rulename = '_RETURN') END
           FROM pg_depend d
           WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = %s AND d.refobjsubid = %s
             AND d.deptype IN ('n', 'a')
             AND NOT (d.classid = 'pg_class'::regclass AND EXISTS (
                 SELECT 1 FROM pg_index x WHERE x.indexrelid = d.objid AND x.indrelid = %s))
           ORDER BY 1, 3""",
        (oid, attnum, oid),
    ).fetchall()
    found: list[ColumnDependent] = []
    views: set[int] = set()
    publications = set(carry_objects.publication_entries(conn, oid, attnum))
    for catalog, objid, described, relkind, trigger, view in rows:
        if catalog in _HANDLED or (catalog == "pg_trigger" and trigger in key_triggers):
            continue
        if catalog == "pg_rewrite" and view is not None and relkind in ("v", "m"):
            if view not in views:
                views.add(int(view))
                found.append(carry_views.carry(conn, int(view)))
        elif catalog == "pg_policy":
            found.append(carry_objects.policy(conn, spec, int(objid)))
        elif catalog == "pg_statistic_ext":
            found.append(carry_objects.statistics(conn, int(objid)))
        elif catalog == "pg_publication_rel":
            publications.add(int(objid))
        elif catalog == "pg_trigger":
            found.append(refused("trigger", str(described), "names the column; triggers are not carried"))
        elif catalog == "pg_rewrite":
            found.append(refused("rule", str(described), "names the column; rules are not carried"))
        else:
            found.append(refused(catalog, str(described), "depends on the column and cannot be carried"))
    found += [carry_objects.publication(conn, spec, entry) for entry in sorted(publications)]
    return sorted(found, key=lambda d: (_ORDER.get(d.kind, 9), d.name))


def _carried(conn: psycopg.Connection[Any], spec: KeySpec, oid: int, attnum: int) -> list[ColumnDependent]:
    """Column privileges, comment and statistics target: re-applied to the new column in the swap."""
    target = sql.Identifier(spec.key_column)
    found = []
    owner = relation_owner(conn, oid)
    grants = column_acl(conn, oid, attnum)
    statements, lost = grant_statements(conn, grants, owner, spec.table_ident, spec.key_column)
    if grants:
        described = [
            f"{g.privilege} to {g.grantee or 'PUBLIC'}"
            + (" with grant option" if g.grantable else "")
            + (f" (granted by {g.grantor})" if g.grantor != owner else "")
            for g in grants
        ]
        action = "granted again on the new column in the swap's transaction, by the same grantor"
        if lost:
            action += (
                f" (except {', '.join(lost)}: the migrating role cannot SET ROLE to it, so it becomes the grantor)"
            )
        found.append(ColumnDependent("column privilege", "; ".join(described), True, action, tuple(statements)))
    row = conn.execute("SELECT col_description(%s, %s)", (oid, attnum)).fetchone()
    if row is not None and row[0] is not None:
        found.append(
            ColumnDependent(
                "comment",
                repr(row[0]) if len(row[0]) <= 60 else repr(row[0][:57] + "..."),
                True,
                "set again on the new column in the swap's transaction",
                (sql.SQL("COMMENT ON COLUMN {}.{} IS {}").format(spec.table_ident, target, sql.Literal(row[0])),),
            )
        )
    row = conn.execute(
        "SELECT attstattarget FROM pg_attribute WHERE attrelid = %s AND attnum = %s", (oid, attnum)
    ).fetchone()
    if row is not None and row[0] is not None and int(row[0]) >= 0:
        found.append(
            ColumnDependent(
                "statistics target",
                str(row[0]),
                True,
                "set again on the new column in the swap's transaction",
                (
                    sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET STATISTICS {}").format(
                        spec.table_ident, target, sql.Literal(int(row[0]))
                    ),
                ),
            )
        )
    return found


def refusal(found: list[ColumnDependent], spec: KeySpec) -> str | None:
    """Why the swap is refused up front, naming every dependent it cannot carry; None when all can be carried."""
    blocking = [d for d in found if not d.carried]
    if not blocking:
        return None
    # Each name says what it is ("view v", "trigger t on table x"), each action why it cannot be carried.
    listed = "; ".join(f"{d.name} ({d.action.removesuffix(': refused up front')})" for d in blocking)
    return (
        f"{len(blocking)} object(s) depend on {spec.label}.{spec.key_column} and cannot be carried across the "
        f"column swap: {listed}. Nothing was changed. Drop them, run the migration, then re-create them "
        "(or use --strategy keep-trigger, which does not touch the column)"
    )

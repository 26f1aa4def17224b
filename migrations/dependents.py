"""What else depends on the key column, found before any change: carried across the swap, or refused up front.

DROP COLUMN in the swap removes (or is blocked by) everything that depends on the column. The plan already puts back
the table's own indexes and constraints (catalog.key_dependents). Here are the others:
- carried, in the swap's transaction, exactly as they were: column privileges, the column comment and its
  statistics target;
- refused up front, before anything is rewritten: views and materialized views, row-level security policies,
  extended statistics, publication column lists, other triggers and rules, and anything else pg_depend names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from exporter.keyspec import KeySpec
from migrations.catalog import column_number, table_oid

# pg_depend entries the plan handles itself: the table's own indexes and constraints, the column's generation
# expression or default, and the key triggers the swap drops.
_HANDLED = ("pg_constraint", "pg_attrdef")


@dataclass(frozen=True)
class ColumnDependent:
    """One object that depends on the key column, and what the migration does with it."""

    kind: str
    name: str
    carried: bool
    action: str
    statements: tuple[sql.Composed, ...] = field(default=(), compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, without the statements."""
        return {"kind": self.kind, "name": self.name, "carried": self.carried, "action": self.action}


def find(
    conn: psycopg.Connection[Any], spec: KeySpec, column: str, key_triggers: set[str] | None = None
) -> list[ColumnDependent]:
    """Every dependent of spec's table column `column`; the statements re-apply the carried ones to spec.key_column."""
    oid = table_oid(conn, spec)
    attnum = column_number(conn, oid, column)
    if attnum is None:
        return []
    found = _blocking(conn, oid, attnum, key_triggers or set())
    found += _carried(conn, spec, oid, attnum)
    return found


def _blocking(conn: psycopg.Connection[Any], oid: int, attnum: int, key_triggers: set[str]) -> list[ColumnDependent]:
    """Objects recorded in pg_depend (and publication column lists) that the swap cannot carry."""
    rows = conn.execute(
        """SELECT DISTINCT d.classid::regclass::text, pg_describe_object(d.classid, d.objid, 0),
                  CASE WHEN d.classid = 'pg_rewrite'::regclass THEN (
                      SELECT c.relkind::text FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
                      WHERE r.oid = d.objid) END,
                  CASE WHEN d.classid = 'pg_trigger'::regclass THEN (
                      SELECT tgname FROM pg_trigger WHERE oid = d.objid) END,
                  CASE WHEN d.classid = 'pg_rewrite'::regclass THEN (
                      SELECT r.ev_class::regclass::text FROM pg_rewrite r WHERE r.oid = d.objid) END
           FROM pg_depend d
           WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = %s AND d.refobjsubid = %s
             AND d.deptype IN ('n', 'a')
             AND NOT (d.classid = 'pg_class'::regclass AND EXISTS (
                 SELECT 1 FROM pg_index x WHERE x.indexrelid = d.objid AND x.indrelid = %s))
           ORDER BY 1, 2""",
        (oid, attnum, oid),
    ).fetchall()
    found = []
    for catalog, described, relkind, trigger, rewrite_of in rows:
        if catalog in _HANDLED or (catalog == "pg_trigger" and trigger in key_triggers):
            continue
        if catalog == "pg_rewrite" and rewrite_of is not None and relkind in ("v", "m"):
            kind = "materialized view" if relkind == "m" else "view"
            name = f"{kind} {rewrite_of}"
        else:
            kind = {
                "pg_policy": "policy",
                "pg_statistic_ext": "extended statistics",
                "pg_trigger": "trigger",
                "pg_rewrite": "rule",
                "pg_publication_rel": "publication column list",
            }.get(catalog, catalog)
            name = described
        found.append(
            ColumnDependent(kind, name, False, "blocks the swap (DROP COLUMN): recreate it by hand; refused up front")
        )
    if conn.info.server_version >= 150000:
        # Column lists of publications (15+), also when pg_depend has no entry for them.
        publications = conn.execute(
            "SELECT p.pubname FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid "
            "WHERE r.prrelid = %s AND r.prattrs IS NOT NULL AND %s = ANY(r.prattrs::int2[]) ORDER BY 1",
            (oid, attnum),
        ).fetchall()
        listed = {d.name for d in found if d.kind == "publication column list"}
        for (name,) in publications:
            label = f"publication {name}"
            if not any(label in existing for existing in listed):
                found.append(
                    ColumnDependent(
                        "publication column list",
                        f"column list of {label}",
                        False,
                        "names the column in its column list: refused up front",
                    )
                )
    return found


def _carried(conn: psycopg.Connection[Any], spec: KeySpec, oid: int, attnum: int) -> list[ColumnDependent]:
    """Column privileges, comment and statistics target: re-applied to the new column in the swap."""
    target = sql.Identifier(spec.key_column)
    found = []
    grants = conn.execute(
        """SELECT a.privilege_type, CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END,
                  a.is_grantable
           FROM pg_attribute t, aclexplode(t.attacl) a
           WHERE t.attrelid = %s AND t.attnum = %s ORDER BY 2, 1""",
        (oid, attnum),
    ).fetchall()
    for privilege, grantee, grantable in grants:
        who = sql.SQL("PUBLIC") if grantee == "PUBLIC" else sql.Identifier(grantee.strip('"'))
        statement = sql.SQL("GRANT {} ({}) ON {} TO {}{}").format(
            sql.SQL(privilege),
            target,
            spec.table_ident,
            who,
            sql.SQL(" WITH GRANT OPTION" if grantable else ""),
        )
        found.append(
            ColumnDependent(
                "column privilege",
                f"{privilege} to {grantee}" + (" with grant option" if grantable else ""),
                True,
                "granted again on the new column in the swap's transaction",
                (statement,),
            )
        )
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
    listed = "; ".join(d.name for d in blocking)  # each name says what it is: "view v", "policy p on table t"
    return (
        f"{len(blocking)} object(s) depend on {spec.label}.{spec.key_column} and cannot be carried across the "
        f"column swap: {listed}. Nothing was changed. Drop them, run the migration, then re-create them "
        "(or use --strategy keep-trigger, which does not touch the column)"
    )

"""Privileges put back exactly, grantor included: a superuser's (or the owner's) GRANT is recorded as granted by the
owner; any other grantor is restored by granting under SET LOCAL ROLE <grantor>, when the migrating role may SET ROLE
to it, and is otherwise replaced by the migrating role (the plan says so).

PostgreSQL cannot record another grantor directly: GRANT ... GRANTED BY is a syntax error on 11-13 and fails with
"grantor must be current user" on 14-18 (measured on 11, 14 and 18).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from migrations.column_dependent import Statement


@dataclass(frozen=True)
class Grant:
    """One aclexplode() entry, role names unquoted; grantee None is PUBLIC."""

    privilege: str
    grantor: str
    grantee: str | None
    grantable: bool


def read_acl(conn: psycopg.Connection[Any], query: sql.Composable, params: tuple[Any, ...]) -> list[Grant]:
    """The entries of the aclitem[] the query returns (one row, one column), in the array's order."""
    rows = conn.execute(
        sql.SQL(
            "SELECT a.privilege_type, g.rolname, r.rolname, a.is_grantable "
            "FROM aclexplode(NULLIF(({}), '{{}}'::aclitem[])) WITH ORDINALITY AS a(grantor, grantee, "
            "privilege_type, is_grantable, n) "
            "JOIN pg_roles g ON g.oid = a.grantor LEFT JOIN pg_roles r ON r.oid = a.grantee ORDER BY a.n"
        ).format(query),
        params,
    ).fetchall()
    return [Grant(str(p), str(g), None if e is None else str(e), bool(x)) for p, g, e, x in rows]


def relation_owner(conn: psycopg.Connection[Any], oid: int) -> str:
    """The role that owns the relation `oid` (the grantor its grants are ordered and re-granted around)."""
    row = conn.execute(
        "SELECT r.rolname FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner WHERE c.oid = %s", (oid,)
    ).fetchone()
    return str(row[0]) if row else ""


def column_acl(conn: psycopg.Connection[Any], oid: int, attnum: int) -> list[Grant]:
    """The privileges granted on one column of a relation."""
    return read_acl(conn, sql.SQL("SELECT attacl FROM pg_attribute WHERE attrelid = %s AND attnum = %s"), (oid, attnum))


def _ordered(grants: list[Grant], owner: str) -> list[Grant]:
    """Grants whose grantor already holds the grant option come first: owner's, then the chains they start."""
    done: list[Grant] = []
    holders: set[tuple[str, str | None]] = {(owner, None)}  # (role, privilege): None stands for every privilege
    left = list(grants)
    while left:
        ready = [g for g in left if (g.grantor, None) in holders or (g.grantor, g.privilege) in holders]
        if not ready:
            done += left  # a chain broken in the catalog: grant the rest in order and let the server decide
            break
        for g in ready:
            done.append(g)
            left.remove(g)
            if g.grantable and g.grantee is not None:
                holders.add((g.grantee, g.privilege))
    return done


def can_set_role(conn: psycopg.Connection[Any]) -> str:
    """pg_has_role's privilege that means "SET ROLE to it works": SET on 16+, where a member can be granted
    WITH SET FALSE and MEMBER stays true; on 11-15 every member may SET ROLE."""
    return "SET" if conn.info.server_version >= 160000 else "MEMBER"


def grant_statements(
    conn: psycopg.Connection[Any], grants: list[Grant], owner: str, on: sql.Composable, column: str | None = None
) -> tuple[list[Statement], list[str]]:
    """GRANT statements that recreate `grants` on `on` (a relation, or its `column`), and any grantor not restored."""
    row = conn.execute("SELECT current_user").fetchone()
    me = str(row[0]) if row else owner
    statements: list[Statement] = []
    lost: list[str] = []
    for g in _ordered(grants, owner):
        what: sql.Composable = sql.SQL(g.privilege)
        if column is not None:
            what = sql.SQL("{} ({})").format(what, sql.Identifier(column))
        grant = sql.SQL("GRANT {} ON {} TO {}{}").format(
            what,
            on,
            sql.SQL("PUBLIC") if g.grantee is None else sql.Identifier(g.grantee),
            sql.SQL(" WITH GRANT OPTION" if g.grantable else ""),
        )
        if g.grantor == owner:
            statements.append(grant)  # run by a superuser or the owner, the grantor recorded is the owner
            continue
        member = conn.execute("SELECT pg_has_role(%s, %s)", (g.grantor, can_set_role(conn))).fetchone()
        if not (member and member[0]):
            statements.append(grant)
            lost.append(g.grantor)
            continue
        statements += [
            sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(g.grantor)),
            grant,
            sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(me)),
        ]
    return statements, sorted(set(lost))

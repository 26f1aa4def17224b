"""Capture and restore the key trigger functions exactly: pg_get_functiondef (volatility, SECURITY, SET, cost),
owner, comment and privileges."""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import sql

_DEFINITION_SQL = """
SELECT pg_get_functiondef(p.oid), pg_get_userbyid(p.proowner), obj_description(p.oid, 'pg_proc'),
       CASE WHEN p.proacl IS NOT NULL THEN ARRAY(
           SELECT ARRAY[COALESCE(r.rolname::text, ''), a.privilege_type, a.is_grantable::text]
           FROM aclexplode(p.proacl) WITH ORDINALITY AS a(grantor, grantee, privilege_type, is_grantable, n)
           LEFT JOIN pg_roles r ON r.oid = a.grantee AND a.grantee <> 0
           ORDER BY a.n) END AS acl
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = %s AND p.proname = %s AND p.pronargs = 0
"""

# pg_get_functiondef ends with: AS $tag$<body>$tag$ (the tag is $function$ unless the body holds it).
_BODY = re.compile(r"\nAS (\$[A-Za-z0-9_]*\$)(.*)\1\s*$", re.DOTALL)


def capture_functions(conn: psycopg.Connection[Any], functions: list[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """{'schema.name': {definition, owner, comment, acl}} for each trigger function, as the catalog holds it now.

    acl is None for the default privileges, else [grantee ('' for PUBLIC), privilege, 'true'/'false' grantable].
    """
    captured: dict[str, dict[str, Any]] = {}
    for schema, name in functions:
        row = conn.execute(_DEFINITION_SQL, (schema, name)).fetchone()
        if row is not None:
            acl = [list(item) for item in row[3]] if row[3] is not None else None
            captured[f"{schema}.{name}"] = {"definition": row[0], "owner": row[1], "comment": row[2], "acl": acl}
    return captured


def captured_body(definition: str) -> str:
    """The body (prosrc) inside a pg_get_functiondef text."""
    match = _BODY.search(definition)
    if match is None:
        raise ValueError("cannot find the body in the function's definition")
    return match.group(2)


def replace_body(definition: str, body: str) -> str:
    """The same CREATE OR REPLACE FUNCTION (IMMUTABLE, SECURITY, SET, ... kept) with another PL/pgSQL body."""
    match = _BODY.search(definition)
    if match is None:
        raise ValueError("cannot find the body in the function's definition")
    tag = "$partkey$"
    while tag in body:
        tag = tag[:-1] + "_$"
    return definition[: match.start()] + f"\nAS {tag}\n{body}\n{tag}\n"


def restore_statements(
    schema: str, name: str, saved: dict[str, Any], current_user: str, body: str | None = None
) -> list[sql.SQL | sql.Composed]:
    """The captured definition byte for byte (or with `body` instead of its own), then its owner, comment and
    privileges (a re-created function would otherwise get the default EXECUTE for PUBLIC)."""
    # The definition is the server's own pg_get_functiondef text from the state table: a whole statement.
    definition = saved["definition"] if body is None else replace_body(saved["definition"], body)
    statements: list[sql.SQL | sql.Composed] = [sql.SQL(definition)]
    function = sql.SQL("{}()").format(sql.Identifier(schema, name))
    if saved.get("owner") and saved["owner"] != current_user:
        statements.append(sql.SQL("ALTER FUNCTION {} OWNER TO {}").format(function, sql.Identifier(saved["owner"])))
    statements.append(sql.SQL("COMMENT ON FUNCTION {} IS {}").format(function, sql.Literal(saved.get("comment"))))
    return statements + privilege_statements(function, saved.get("acl"))


def privilege_statements(function: sql.Composable, acl: list[list[str]] | None) -> list[sql.SQL | sql.Composed]:
    """GRANTs that give the function the captured privileges, in their order; none for the default (NULL) ones."""
    if acl is None:
        return []
    statements: list[sql.SQL | sql.Composed] = [sql.SQL("REVOKE ALL ON FUNCTION {} FROM PUBLIC").format(function)]
    for grantee, privilege, grantable in acl:
        if privilege != "EXECUTE":  # the only privilege a function has; the state table is not trusted further
            raise ValueError(f"unexpected privilege {privilege!r} in the captured function's ACL")
        role = sql.SQL("PUBLIC") if grantee == "" else sql.Identifier(grantee)
        option = sql.SQL(" WITH GRANT OPTION" if grantable == "true" else "")
        statements.append(sql.SQL("GRANT {} ON FUNCTION {} TO {}{}").format(sql.SQL(privilege), function, role, option))
    return statements

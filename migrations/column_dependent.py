"""One object that depends on the key column, what the migration does with it, and the SQL that carries it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

Statement = sql.SQL | sql.Composed


@dataclass(frozen=True)
class ColumnDependent:
    """Carried: `drops` run in the swap before DROP COLUMN, `statements` after the rename; else refused up front."""

    kind: str
    name: str
    carried: bool
    action: str
    statements: tuple[Statement, ...] = field(default=(), compare=False)
    drops: tuple[Statement, ...] = field(default=(), compare=False)
    scans: int = field(default=0, compare=False)  # full passes over the table it adds to the swap (REFRESH)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, without the statements."""
        return {"kind": self.kind, "name": self.name, "carried": self.carried, "action": self.action}


def refused(kind: str, name: str, why: str) -> ColumnDependent:
    """A dependent the swap cannot carry: named in the refusal before anything changes."""
    return ColumnDependent(kind, name, False, f"{why}: refused up front")


@contextmanager
def qualified_names(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """An empty search_path while definitions are read, so pg_get_viewdef and friends qualify every name."""
    row = conn.execute("SELECT current_setting('search_path')").fetchone()
    original = str(row[0]) if row else "public"
    conn.execute("SELECT set_config('search_path', '', false)")
    try:
        yield
    finally:
        conn.execute("SELECT set_config('search_path', %s, false)", (original,))


def qualified(schema: str, name: str) -> sql.Identifier:
    """schema.name, quoted as needed."""
    return sql.Identifier(schema, name)


def comment(kind: str, target: sql.Composable, text: str | None) -> list[Statement]:
    """COMMENT ON <kind> target IS text, when there is one."""
    if text is None:
        return []
    return [sql.SQL("COMMENT ON {} {} IS {}").format(sql.SQL(kind), target, sql.Literal(text))]

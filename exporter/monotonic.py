"""A discovered table's column for incremental verification, read from the catalog, and why it was (not) picked."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

# Every column of the table with what makes it a watermark: its type, identity, default, whether it is in the
# primary key, and the first index it leads (a watermark nobody indexed makes each incremental run read the table).
# attidentity exists from PG 10, the oldest server supported is 11.
_COLUMNS_SQL = """
SELECT a.attname::text AS name,
       format_type(a.atttypid, NULL) AS type,
       a.attidentity::text AS identity,
       pg_get_expr(d.adbin, d.adrelid) AS default_expr,
       EXISTS (SELECT 1 FROM pg_index i
               WHERE i.indrelid = a.attrelid AND i.indisprimary AND a.attnum = ANY (i.indkey)) AS in_primary_key,
       (SELECT ic.relname::text FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
        WHERE i.indrelid = a.attrelid AND i.indkey[0] = a.attnum AND i.indexprs IS NULL
        ORDER BY NOT i.indisprimary, ic.relname LIMIT 1) AS leading_index
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = %(schema)s AND c.relname = %(table)s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_INTEGERS = {"smallint", "integer", "bigint"}
_SERIAL = re.compile(r"^nextval\('")
# How the server prints a default of the transaction's (or the statement's, or the clock's) time.
_NOW = {"now()", "CURRENT_TIMESTAMP", "transaction_timestamp()", "statement_timestamp()", "clock_timestamp()"}


@dataclass(frozen=True)
class Watermark:
    """The column picked for incremental verification (None: incremental is off) and the reason, for people."""

    column: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {"monotonic_column": self.column, "incremental": self.reason}


def _kind(column: dict[str, Any]) -> str | None:
    """What makes this column ever-increasing: identity, serial or DEFAULT now(); None when nothing does."""
    default = column["default_expr"] or ""
    if column["type"] in _INTEGERS and column["in_primary_key"]:
        if column["identity"] in ("a", "d"):
            return "identity column in the primary key"
        if _SERIAL.match(default):
            return f"serial column in the primary key (DEFAULT {default})"
    if column["type"] == "timestamp with time zone" and default in _NOW:
        return f"timestamptz with DEFAULT {default}"
    return None


def pick_watermark(conn: psycopg.Connection[Any], schema: str, table: str) -> Watermark:
    """The obvious watermark column of SCHEMA.TABLE, or why there is none."""
    with conn.cursor(row_factory=dict_row) as cur:
        columns = cur.execute(_COLUMNS_SQL, {"schema": schema, "table": table}).fetchall()
    # An identity or serial key first: it grows with every insert and is always indexed by the primary key.
    # A timestamp filled in by now() only when there is none: several rows share a value, and it follows the clock.
    unindexed: list[tuple[dict[str, Any], str]] = []
    for wanted in ("primary key", "timestamptz"):
        found = [(c, kind) for c in columns if (kind := _kind(c)) is not None and wanted in kind]
        indexed = [(c, kind) for c, kind in found if c["leading_index"] is not None]
        unindexed += [(c, kind) for c, kind in found if c["leading_index"] is None]
        if len(indexed) > 1:
            names = ", ".join(c["name"] for c, _ in indexed)
            return Watermark(None, f"off: several candidates ({names}); set monotonic_column in tables: to choose")
        if indexed:
            column, kind = indexed[0]
            return Watermark(column["name"], f"on {column['name']}: {kind}, leads index {column['leading_index']}")
    if unindexed:
        column, kind = unindexed[0]
        return Watermark(
            None,
            f"off: {column['name']} ({kind}) leads no index, so every incremental run would read the whole "
            "table; index it or set monotonic_column in tables:",
        )
    return Watermark(
        None,
        "off: no identity or serial column in the primary key and no timestamptz column with DEFAULT now(); "
        "set monotonic_column in tables: to turn it on",
    )

"""A verified table's key spec and verification inputs, kept between runs until the catalog they come from changes.

Every verification run needs the table's formula (`key_expression: auto` reads it from the trigger, generated
column, CHECK or partition key and the schema's helper functions: about ten catalog queries and a parse of each
function body) and its key column and primary key (three more). At 200 discovered tables with incremental
verification every minute that was most of the exporter's database time and a large part of its CPU. None of it
changes unless the catalog rows it was read from do, so a run reads one fingerprint of those rows instead: the
table's pg_class and pg_attribute rows, the triggers on it and its partitions with their functions, its column
defaults and generated expressions, CHECK constraints and indexes, every function of its schema (helpers), each
by oid and row version (xmin: CREATE OR REPLACE, ALTER, RENAME, DROP and re-create all write a new row), plus the
server version and the search_path (which the catalog's deparsed text depends on).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from exporter.formula_catalog import resolve_spec
from exporter.introspect import verification_inputs
from exporter.keyspec import KeySpec
from exporter.pg.catalog import relation_tree

# One row when the table exists; md5 keeps the fingerprint a few dozen bytes however many functions the schema has.
_FINGERPRINT = (
    relation_tree(
        "(SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %(schema)s AND c.relname = %(table)s AND c.relkind IN ('r', 'p'))"
    )
    + """SELECT c.oid, md5(concat_ws('|',
       current_setting('server_version_num'), current_setting('search_path'), c.xmin::text,
       (SELECT string_agg(a.attnum || ':' || a.xmin::text, ',' ORDER BY a.attnum)
          FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0),
       (SELECT string_agg(t.oid || ':' || t.xmin::text || ':' || p.oid || ':' || p.xmin::text, ',' ORDER BY t.oid)
          FROM tree JOIN pg_catalog.pg_trigger t ON t.tgrelid = tree.relid
          JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid),
       (SELECT string_agg(d.oid || ':' || d.xmin::text, ',' ORDER BY d.oid)
          FROM pg_catalog.pg_attrdef d WHERE d.adrelid = c.oid),
       (SELECT string_agg(k.oid || ':' || k.xmin::text, ',' ORDER BY k.oid)
          FROM pg_catalog.pg_constraint k WHERE k.conrelid = c.oid),
       (SELECT string_agg(i.indexrelid || ':' || i.xmin::text, ',' ORDER BY i.indexrelid)
          FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid),
       (SELECT string_agg(p.oid || ':' || p.xmin::text, ',' ORDER BY p.oid)
          FROM pg_catalog.pg_proc p WHERE p.pronamespace = c.relnamespace)))
FROM pg_catalog.pg_class c WHERE c.oid = (SELECT relid FROM tree WHERE parent = 0)
"""
)


@dataclass(frozen=True)
class Resolved:
    """What a verification run reads before it verifies: the spec keyed by the table's formula, the key column's
    presence and the primary key."""

    spec: KeySpec
    key_column_exists: bool
    primary_key: tuple[str, ...]


class SpecCache:
    """The last Resolved of one table and the fingerprint it was read under (used under the table's lock)."""

    def __init__(self) -> None:
        # The spec as configured (a reload may change it while the table's state is kept) and the catalog's print.
        self._fingerprint: tuple[KeySpec, int, str] | None = None
        self._resolved: Resolved | None = None
        self.reads = 0  # full catalog reads since the start (for tests)

    def resolve(self, conn: psycopg.Connection[Any], spec: KeySpec) -> Resolved:
        """SPEC resolved against the table's catalog: one query when nothing changed since the last run."""
        row = conn.execute(_FINGERPRINT, {"schema": spec.schema, "table": spec.table}).fetchone()
        fingerprint = None if row is None else (spec, int(row[0]), str(row[1]))
        if fingerprint is not None and fingerprint == self._fingerprint and self._resolved is not None:
            return self._resolved
        # A missing table or a failed read raises here, as it did before there was a cache, and keeps nothing.
        self._fingerprint = self._resolved = None
        self.reads += 1
        resolved_spec = resolve_spec(conn, spec)  # key_expression: auto reads the table's own formula
        key_column_exists, primary_key = verification_inputs(conn, resolved_spec)
        resolved = Resolved(resolved_spec, key_column_exists, primary_key)
        if fingerprint is not None:
            self._fingerprint, self._resolved = fingerprint, resolved
        return resolved

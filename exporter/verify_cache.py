"""Keep full verification's catalog reads and built statements between runs, until the schema changes.

Planning a full pass reads four catalogs (leaves and bounds, indexes, pg_stats, NOT NULL) and composes one
statement over every partition. None of it changes between runs unless the schema, a grant or the statistics do,
so a run reads only a fingerprint of the table's tree: per relation its pg_class row version (xmin: ALTER, ATTACH,
GRANT and a rewrite all write a new row), its indexes' pg_index row versions (CREATE, DROP, a concurrent build
turning valid), its ANALYZE counters (n_distinct may have moved), whether the role may read it, and the table's
columns with their NOT NULL flags. A partition added or detached changes the tree itself. The same query returns
the row estimates, which change with every write and are never cached.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from typing import Any

import psycopg

from exporter.keyspec import KeySpec
from exporter.pg.catalog import relation_tree
from exporter.verify_plan import Catalog, read_catalog

# One row per relation of the tree (the table included). VACUUM and ANALYZE update pg_class in place (same xmin),
# so they do not invalidate; reading a partition does not either.
_FINGERPRINT = (
    relation_tree("%(table)s::regclass::oid")
    + """SELECT c.oid, c.xmin::text, c.relkind::text,
       pg_catalog.pg_stat_get_analyze_count(c.oid) + pg_catalog.pg_stat_get_autoanalyze_count(c.oid),
       pg_catalog.has_table_privilege(c.oid, 'SELECT'),
       array(SELECT i.indexrelid::text || ':' || i.xmin::text FROM pg_catalog.pg_index i
              WHERE i.indrelid = c.oid ORDER BY i.indexrelid),
       CASE WHEN c.oid = %(table)s::regclass::oid THEN
           array(SELECT a.attname || ':' || a.atttypid::text || ':' || a.attnotnull::text
                   FROM pg_catalog.pg_attribute a
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum)
       END,
       greatest(c.reltuples, 0)::bigint, pg_catalog.pg_stat_get_live_tuples(c.oid)
FROM tree JOIN pg_catalog.pg_class c ON c.oid = tree.relid
ORDER BY c.oid
"""
)

Fingerprint = tuple[tuple[Any, ...], ...]


def fingerprint(conn: psycopg.Connection[Any], spec: KeySpec) -> tuple[Fingerprint, dict[int, int]]:
    """The tree's fingerprint (what a cached plan depends on) and each relation's estimated rows."""
    rows = conn.execute(_FINGERPRINT, {"table": spec.table_ident.as_string(conn)}).fetchall()
    identity = tuple(
        (int(oid), xmin, kind, int(analyzed), bool(readable), tuple(indexes), tuple(columns or ()))
        for oid, xmin, kind, analyzed, readable, indexes, columns, _, _ in rows
    )
    estimates = {int(row[0]): int(row[8]) if row[8] > 0 else int(row[7]) for row in rows}
    return identity, estimates


@dataclass
class _Entry:
    """One table's cached catalog and the statements built from it."""

    key: tuple[Any, ...]
    catalog: Catalog
    # (the plan's shape, the full pass's statements as composed for that shape)
    statements: tuple[Any, Any] | None = None


@dataclass
class PlanCache:
    """Full verification's catalog and statements per table, valid while the table's fingerprint is unchanged.

    Shared by the runs of one table (the exporter keeps one per table); hits and misses are counted for tests
    and the bench.
    """

    entries: dict[tuple[Any, ...], _Entry] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def catalog(self, conn: psycopg.Connection[Any], spec: KeySpec) -> tuple[_Entry, dict[int, int]]:
        """The table's catalog, re-read only when its fingerprint changed; and the current row estimates."""
        identity, estimates = fingerprint(conn, spec)
        info = conn.info
        # The same table on another server or database is another entry; so is another formula or key column.
        where = (info.host, info.port, info.dbname, info.server_version, spec)
        # The fingerprint is kept as a digest: as tuples it took ~37 KB a 100-partition table (7 MB at 200 targets).
        key = (*where, hashlib.blake2b(repr(identity).encode(), digest_size=16).digest())
        with self.lock:
            entry = self.entries.get(where)
            if entry is not None and entry.key == key:
                self.hits += 1
                return entry, estimates
        catalog, _ = read_catalog(conn, spec)
        entry = _Entry(key=key, catalog=catalog)
        with self.lock:
            self.misses += 1
            self.entries[where] = entry
        return entry, estimates

"""Keep full verification's catalog reads and built statements between runs, until the schema changes.

Planning a full pass reads four catalogs (leaves and bounds, indexes, pg_stats, NOT NULL) and composes one
statement over every partition. None of it changes between runs unless the schema, a grant or the statistics do,
so a run reads only a fingerprint of the table's tree: per relation its pg_class row version (xmin: ALTER, ATTACH,
GRANT and a rewrite all write a new row), its indexes' pg_index row versions (CREATE, DROP, a concurrent build
turning valid), its ANALYZE counters (n_distinct may have moved), whether the role may read it, and the table's
columns with their types, collations and NOT NULL flags (a type or collation change may make grouping by value
unsafe: verify_plan.SAFE_TYPES). A partition added or detached changes the tree itself. The same query returns the
row estimates, which change with every write and are never cached.
"""

from __future__ import annotations

import gc
import hashlib
import math
import threading
import zlib
from array import array
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from exporter.keyspec import KeySpec
from exporter.pg.catalog import relation_tree
from exporter.verify_known import KnownValues
from exporter.verify_plan import LEAF_COLUMNS, Catalog, LeafRow, LeafTuple, leading_index, read_catalog

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
           array(SELECT a.attname || ':' || a.atttypid::text || ':' || a.attcollation::text || ':' || a.attnotnull::text
                   FROM pg_catalog.pg_attribute a
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum)
       END,
       greatest(c.reltuples, 0)::bigint, pg_catalog.pg_stat_get_live_tuples(c.oid),
       """
    + LEAF_COLUMNS
    + """
FROM tree JOIN pg_catalog.pg_class c ON c.oid = tree.relid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
ORDER BY c.oid
"""
)

Fingerprint = tuple[tuple[Any, ...], ...]


def fingerprint(conn: psycopg.Connection[Any], spec: KeySpec) -> tuple[Fingerprint, dict[int, int], list[LeafTuple]]:
    """The tree's fingerprint (what a cached plan depends on), each relation's estimated rows, and the leaf rows
    read_catalog needs on a miss (so that the tree is read once)."""
    rows = conn.execute(_FINGERPRINT, {"table": spec.table_ident.as_string(conn), "key": spec.key_column}).fetchall()
    identity = tuple(
        (int(oid), xmin, kind, int(analyzed), bool(readable), tuple(indexes), tuple(columns or ()))
        for oid, xmin, kind, analyzed, readable, indexes, columns, *_ in rows
    )
    estimates = {int(row[0]): int(row[8]) if row[8] > 0 else int(row[7]) for row in rows}
    # In read_catalog's order (by name; PostgreSQL compares names bytewise, as Python compares UTF-8 code points).
    leaves = sorted((tuple([row[0], *row[9:]]) for row in rows if row[2] == "r"), key=lambda leaf: leaf[2])
    return identity, estimates, leaves


_SEP = "\0"  # never in an identifier or a bound expression (PostgreSQL text holds no NUL)
_LIST_BY_KEY, _READABLE, _NO_BOUND = 1, 2, 4


@dataclass(frozen=True, slots=True)
class PackedCatalog:
    """A Catalog in a handful of flat objects, whatever the partition count; unpacked for each run.

    As read (a LeafRow, its strings, a dict of indexes and one of statistics per leaf) a 100-partition table's
    catalog took ~100 KB in ~1,500 objects: 20 MB at 200 targets, held between runs for planning alone. Of the
    indexes only the first one planning can use is kept per leaf (the one leading_index picks).
    """

    oids: array[int]
    relations: str  # _SEP-joined, one per leaf
    bounds: str  # _SEP-joined, "" where the flags say there is none
    flags: bytes  # per leaf: _LIST_BY_KEY | _READABLE | _NO_BOUND
    index_names: str  # _SEP-joined, "" where the leaf has no usable index
    index_columns: tuple[tuple[str, ...] | None, ...]  # per leaf; equal tuples are one object
    stat_columns: tuple[str, ...]
    stats: array[float]  # per leaf, one n_distinct per stat column; NaN: no statistics
    nullable: tuple[str, ...]
    unsafe: tuple[tuple[str, str], ...]

    @classmethod
    def pack(cls, catalog: Catalog, sources: tuple[str, ...]) -> PackedCatalog:
        """CATALOG, packed for a key computed from SOURCES."""
        shared: dict[tuple[str, ...], tuple[str, ...]] = {}
        names: list[str] = []
        columns: list[tuple[str, ...] | None] = []
        for leaf in catalog.leaves:
            usable = next(
                (index for index in catalog.indexes.get(leaf.oid, []) if leading_index([index], sources)), None
            )
            names.append(usable[0] if usable else "")
            if usable is None:
                columns.append(None)
            else:
                found = tuple(usable[1])
                columns.append(shared.setdefault(found, found))
        stat_columns = tuple(sorted({column for stats in catalog.stats.values() for column in stats}))
        stats = array("d")
        for leaf in catalog.leaves:
            per_leaf = catalog.stats.get(leaf.oid, {})
            stats.extend(per_leaf.get(column, math.nan) for column in stat_columns)
        return cls(
            oids=array("q", (leaf.oid for leaf in catalog.leaves)),
            relations=_SEP.join(leaf.relation for leaf in catalog.leaves),
            bounds=_SEP.join(leaf.bound or "" for leaf in catalog.leaves),
            flags=bytes(
                (_LIST_BY_KEY if leaf.list_by_key else 0)
                | (_READABLE if leaf.readable else 0)
                | (_NO_BOUND if leaf.bound is None else 0)
                for leaf in catalog.leaves
            ),
            index_names=_SEP.join(names),
            index_columns=tuple(columns),
            stat_columns=stat_columns,
            stats=stats,
            nullable=catalog.nullable,
            unsafe=catalog.unsafe,
        )

    def unpack(self) -> Catalog:
        """The Catalog planning reads (its indexes only those that planning can use)."""
        if not self.oids:
            return Catalog(leaves=(), indexes={}, stats={}, nullable=self.nullable, unsafe=self.unsafe)
        leaves: list[LeafRow] = []
        indexes: dict[int, list[tuple[str, list[str]]]] = {}
        stats: dict[int, dict[str, float]] = {}
        width = len(self.stat_columns)
        rows = zip(
            self.oids,
            self.relations.split(_SEP),
            self.bounds.split(_SEP),
            self.flags,
            self.index_names.split(_SEP),
            self.index_columns,
            strict=True,
        )
        for position, (oid, relation, bound, flags, index, columns) in enumerate(rows):
            leaves.append(
                LeafRow(
                    oid,
                    relation,
                    None if flags & _NO_BOUND else bound,
                    bool(flags & _LIST_BY_KEY),
                    bool(flags & _READABLE),
                )
            )
            if columns is not None:
                indexes[oid] = [(index, list(columns))]
            values = self.stats[position * width : (position + 1) * width]
            known = {
                column: value for column, value in zip(self.stat_columns, values, strict=True) if not math.isnan(value)
            }
            if known:
                stats[oid] = known
        return Catalog(leaves=tuple(leaves), indexes=indexes, stats=stats, nullable=self.nullable, unsafe=self.unsafe)


def digest(value: tuple[Any, ...]) -> bytes:
    """16 bytes that stand for a tuple of plain values (ints, strings, bools, None, tuples of them) in the cache."""
    return hashlib.blake2b(repr(value).encode(), digest_size=16).digest()


Statements = tuple[bytes, tuple[tuple[list[sql.Composable], bytes], ...]]


class _Entry:
    """One table's cached catalog (packed) and the statements built from it (compressed)."""

    __slots__ = ("_statements", "key", "known", "packed")

    def __init__(self, key: tuple[Any, ...], packed: PackedCatalog) -> None:
        self.key = key
        self.packed = packed
        # Source values full passes found good or bad per single-value partition (verify_known.py); dropped with
        # the entry when the fingerprint changes.
        self.known: KnownValues | None = None
        self._statements: tuple[bytes, tuple[tuple[bytes, bytes] | tuple[list[sql.Composable], bytes], ...]] | None
        self._statements = None

    @property
    def catalog(self) -> Catalog:
        """The catalog, unpacked afresh (a few hundred microseconds for 100 partitions; planning reads it once)."""
        return self.packed.unpack()

    @property
    def statements(self) -> Statements | None:
        """(a digest of the plans' shape, each statement's group listing and evaluated SQL), as verify.py set it."""
        if self._statements is None:
            return None
        shape, kept = self._statements
        return shape, tuple(_expanded(statement) for statement in kept)

    @statements.setter
    def statements(self, value: Statements) -> None:
        # The texts are SQL of ~15 KB per pass that repeats itself partition after partition: zlib keeps a tenth
        # (a 100-partition table's 31 KB -> ~3 KB) and gives it back in ~0.1 ms, once a run.
        shape, statements = value
        self._statements = (shape, tuple(_compressed(statement) for statement in statements))


def _compressed(
    statement: tuple[list[sql.Composable], bytes],
) -> tuple[bytes, bytes] | tuple[list[sql.Composable], bytes]:
    """A statement's listing (one rendered SQL text) and evaluated SQL, compressed; any other shape as it is."""
    groups, evaluated = statement
    if len(groups) == 1 and type(groups[0]) is sql.SQL:
        return zlib.compress(groups[0].as_string().encode()), zlib.compress(evaluated)
    return statement


def _expanded(kept: tuple[bytes, bytes] | tuple[list[sql.Composable], bytes]) -> tuple[list[sql.Composable], bytes]:
    """A statement as _compressed got it."""
    listing, evaluated = kept
    if isinstance(listing, bytes):
        return [sql.SQL(zlib.decompress(listing).decode())], zlib.decompress(evaluated)
    return listing, evaluated


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
        identity, estimates, leaves = fingerprint(conn, spec)
        info = conn.info
        # The same table on another server or database is another entry; so is another formula or key column.
        where = (info.host, info.port, info.dbname, info.server_version, spec)
        # The fingerprint is kept as a digest: as tuples it took ~37 KB a 100-partition table (7 MB at 200 targets).
        key = (*where, digest(identity))
        with self.lock:
            entry = self.entries.get(where)
            if entry is not None and entry.key == key:
                self.hits += 1
                return entry, estimates
        catalog, _ = read_catalog(conn, spec, leaves)
        entry = _Entry(key=key, packed=PackedCatalog.pack(catalog, spec.source_columns))
        with self.lock:
            self.misses += 1
            self.entries[where] = entry
        return entry, estimates


def kept_objects(root: object) -> int:
    """How many distinct objects are reachable from ROOT (classes and modules excluded): what a cache entry holds."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, type | type(gc)):
            continue
        seen.add(id(item))
        stack.extend(gc.get_referents(item))
    return len(seen)

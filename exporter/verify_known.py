"""Source values a full pass found good or bad per single-value partition, kept for the next pass.

A row's expected key is a pure function of its source value and the formula, and every row of a single-LIST-value
partition has that value as its key. So a source value found good in such a partition stays good there for every
row, now and later; a value found bad stays bad with the same expected key. The next full pass then needs one
aggregate per partition (`count(*)`, rows whose value is not known, rows of each known-bad value) instead of a
GROUP BY, and groups only the rows whose value it has not seen.

What is remembered is only valid for one formula and key spec, one partition (oid and bound), one column type and
one server run: it lives in the plan cache's entry (dropped when the table's fingerprint changes; the entry is per
server address, database, version and spec) and carries the postmaster's start time and the leaf's bound, checked
before use.
"""

from __future__ import annotations

import zlib
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg

# More distinct values than this in one partition: not remembered (an aggregate probing a hash of thousands of
# values per row stops paying, and memory grows with values). At 10M rows x 100,000 collections a partition holds
# up to ~1,000 (bench/verify_cost.py); 200 targets x 100 partitions stay bounded.
MAX_VALUES = 1000
# Known-bad values are counted one FILTER each per row: a partition with more of them groups instead.
MAX_BAD = 16
# `= ANY(const array)` is hashed from PostgreSQL 14; before, it is a linear search per row (not measured to pay).
MIN_SERVER = 140000

_SEP = "\0"  # never in a PostgreSQL text value


@dataclass(frozen=True, slots=True)
class KnownBad:
    """A source value whose rows in its partition all have the same wrong key, or raise."""

    text: str
    expected: int | None
    raises: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class KnownLeaf:
    """One partition's remembered values, as a run works with them (unpacked from KnownValues)."""

    bound: str
    values: tuple[str, ...]  # found good, sorted
    bad: tuple[KnownBad, ...]

    @classmethod
    def make(cls, bound: str, good: Iterable[str], bad: Iterable[KnownBad]) -> KnownLeaf | None:
        """A leaf's values, or None when there are too many to remember."""
        values = tuple(sorted(set(good)))
        bad_values = tuple(sorted(set(bad), key=lambda b: b.text))
        if len(values) + len(bad_values) > MAX_VALUES or len(bad_values) > MAX_BAD:
            return None
        return cls(bound, values, bad_values)

    @property
    def count(self) -> int:
        """How many values were found good."""
        return len(self.values)

    def merged(self, good: Iterable[str], bad: Iterable[KnownBad]) -> KnownLeaf | None:
        """These values and more, or None when they no longer fit."""
        return KnownLeaf.make(self.bound, [*self.values, *good], [*self.bad, *bad])


@dataclass(frozen=True, slots=True)
class KnownValues:
    """A table's remembered values, packed into a few flat objects whatever the partition count.

    As KnownLeaf objects (a tuple of strings each) a fleet table of 100 partitions took tens of KB held between
    runs, at 200 targets megabytes; packed, the good values are one zlib blob (uuid texts compress to about half).
    Valid for one server run (the postmaster's start time) and one source column type.
    """

    server: str
    column_type: str
    oids: array[int]
    bounds: str  # _SEP-joined, one per leaf
    counts: array[int]  # per leaf, how many good values it has in packed
    packed: bytes  # zlib: every leaf's good values in leaf order, _SEP-joined
    bad: tuple[tuple[int, tuple[KnownBad, ...]], ...]  # (position, values) of the leaves with bad values

    @classmethod
    def pack(cls, server: str, column_type: str, leaves: dict[int, KnownLeaf]) -> KnownValues:
        """LEAVES (by oid), packed."""
        oids = sorted(leaves)
        return cls(
            server=server,
            column_type=column_type,
            oids=array("q", oids),
            bounds=_SEP.join(leaves[oid].bound for oid in oids),
            counts=array("l", (leaves[oid].count for oid in oids)),
            packed=zlib.compress(_SEP.join(value for oid in oids for value in leaves[oid].values).encode()),
            bad=tuple((position, leaves[oid].bad) for position, oid in enumerate(oids) if leaves[oid].bad),
        )

    def unpack(self) -> dict[int, KnownLeaf]:
        """The leaves by oid (a fraction of a millisecond for thousands of values)."""
        if not self.oids:
            return {}
        bad = dict(self.bad)
        # Counted, not split by a separator: a value may be the empty text.
        values = zlib.decompress(self.packed).decode().split(_SEP) if sum(self.counts) else []
        leaves = {}
        start = 0
        for position, (oid, bound, count) in enumerate(
            zip(self.oids, self.bounds.split(_SEP), self.counts, strict=True)
        ):
            leaves[oid] = KnownLeaf(bound, tuple(values[start : start + count]), bad.get(position, ()))
            start += count
        return leaves


def server_run(conn: psycopg.Connection[Any]) -> str:
    """What identifies this server run: its postmaster start time (microseconds)."""
    row = conn.execute("SELECT pg_catalog.pg_postmaster_start_time()::text").fetchone()
    return str(row[0]) if row else ""


def array_literal(values: Iterable[str]) -> str:
    """PostgreSQL's array input syntax for these texts, every element quoted (NULL, commas, braces, quotes)."""
    quoted = ('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"' for value in values)
    return "{" + ",".join(quoted) + "}"

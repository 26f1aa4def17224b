"""A fleet-sized snapshot without a fleet: one real target's results (100 partitions), cloned under N names."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import fields, replace
from types import MappingProxyType
from typing import Any

import psycopg

from bench.server import bench_server
from bench.tables import create_list_table, insert_rows
from exporter.app import Exporter
from exporter.config import parse_config
from exporter.snapshot import Snapshot

PARTITIONS = 100


def _config(dsn: str) -> str:
    """One target, one 100-partition table, every check (the insert probe too: its histogram is encoded)."""
    return f"""
targets:
  - name: db000
    dsn: "{dsn}"
    tables:
      - table: chunks
        modulus: {PARTITIONS}
        monotonic_column: id
        checks: {{insert_probe: {{enabled: true}}}}
"""


def one_target(dsn: str) -> Snapshot:
    """The snapshot of one real target after every check ran once."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        create_list_table(conn, modulus=PARTITIONS)
        insert_rows(conn, 2000, modulus=PARTITIONS)
        conn.execute("VACUUM ANALYZE chunks")
    exporter = Exporter(parse_config(_config(dsn), "<bench>"))
    try:
        exporter.run_all_once()
        return exporter.store.current
    finally:
        exporter.stop()


def cloned(snapshot: Snapshot, count: int, source: str = "db000") -> Snapshot:
    """SNAPSHOT's target repeated under the names fleet_000 ... (every mapping is keyed by target first)."""
    names = [f"fleet_{index:03d}" for index in range(count)]
    parts: dict[str, Any] = {}
    for item in fields(snapshot):
        mapping: Mapping[Any, Any] = getattr(snapshot, item.name)
        out: dict[Any, Any] = {}
        for name in names:
            for key, value in mapping.items():
                if key == source:
                    out[name] = value
                elif isinstance(key, tuple) and key[0] == source:
                    out[(name, *key[1:])] = replace(value, target=name) if hasattr(value, "target") else value
        parts[item.name] = MappingProxyType(out)
    return Snapshot(**parts)


def names(count: int) -> list[str]:
    """The cloned targets' names."""
    return [f"fleet_{index:03d}" for index in range(count)]


@contextlib.contextmanager
def fleet_snapshot(count: int) -> Iterator[Snapshot]:
    """A COUNT-target snapshot from one real target on a throwaway server."""
    with bench_server() as server:
        with psycopg.connect(server.dsn, autocommit=True) as admin:
            admin.execute("CREATE DATABASE fleet_one")
        yield cloned(one_target(psycopg.conninfo.make_conninfo(server.dsn, dbname="fleet_one")), count)

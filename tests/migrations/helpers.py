"""Helpers for partkey-migrate tests: run the CLI, and snapshot rows and catalog to compare."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import psycopg

from migrations.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass(frozen=True)
class Run:
    """What a user sees from one CLI run."""

    code: int
    out: str
    err: str


def cli(dsn: str, *args: str, modulus: int = 10) -> Run:
    """Run partkey-migrate in this process, capturing stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*args, "--dsn", dsn, "--modulus", str(modulus)])
    return Run(code, out.getvalue(), err.getvalue())


def spawn(dsn: str, *args: str, modulus: int = 10, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start partkey-migrate as its own process (for SIGKILL and concurrency tests)."""
    return subprocess.Popen(
        [sys.executable, "-m", "migrations.cli", *args, "--dsn", dsn, "--modulus", str(modulus)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def keys(conn: psycopg.Connection[Any], table: str = "chunks") -> dict[int, tuple[str, int, str]]:
    """Every row: id -> (collection_id, partition_key, the relation it is stored in)."""
    rows = conn.execute(
        f"SELECT id, collection_id::text, partition_key, tableoid::regclass::text FROM {table}"
    ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def catalog(conn: psycopg.Connection[Any], table: str = "chunks") -> dict[str, Any]:
    """Indexes, constraints, key triggers, columns and functions of the table and its partitions."""
    tree = """WITH RECURSIVE tree(relid) AS (SELECT %(t)s::regclass::oid UNION ALL
              SELECT i.inhrelid FROM pg_inherits i JOIN tree ON i.inhparent = tree.relid)"""
    generated = "attgenerated::text" if conn.info.server_version >= 120000 else "''"
    # Clones of a parent trigger (13+) are left out: they come and go with the parent's.
    not_clone = " AND t.tgparentid = 0" if conn.info.server_version >= 130000 else ""
    return {
        "indexes": dict(
            conn.execute(
                "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x "
                "JOIN pg_class i ON i.oid = x.indexrelid "
                "WHERE x.indrelid = %(t)s::regclass ORDER BY 1",
                {"t": table},
            ).fetchall()
        ),
        "constraints": dict(
            conn.execute(
                "SELECT conname || ':' || convalidated, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = %(t)s::regclass ORDER BY 1",
                {"t": table},
            ).fetchall()
        ),
        "triggers": sorted(
            conn.execute(
                tree + " SELECT c.relname, t.tgname, p.proname FROM pg_trigger t "
                "JOIN tree ON t.tgrelid = tree.relid JOIN pg_class c ON c.oid = t.tgrelid "
                "JOIN pg_proc p ON p.oid = t.tgfoid WHERE NOT t.tgisinternal" + not_clone,
                {"t": table},
            ).fetchall()
        ),
        "columns": conn.execute(
            f"SELECT attname, format_type(atttypid, atttypmod), attnotnull, {generated} "
            "FROM pg_attribute WHERE attrelid = %(t)s::regclass AND attnum > 0 AND NOT attisdropped "
            "ORDER BY attnum",
            {"t": table},
        ).fetchall(),
        "functions": sorted(
            conn.execute("SELECT proname, prosrc FROM pg_proc WHERE pronamespace = 'public'::regnamespace").fetchall()
        ),
        "relations": sorted(
            r[0]
            for r in conn.execute("SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace").fetchall()
        ),
    }


def legacy_trigger(conn: psycopg.Connection[Any]) -> str:
    """Where a LIST table's legacy trigger goes: the parent on PG 13+, each partition on 11/12 (no row triggers on a
    partitioned table there)."""
    return "parent" if conn.info.server_version >= 130000 else "partitions"


def state(conn: psycopg.Connection[Any]) -> tuple[str, list[str]] | None:
    """(status, steps done) from the state table, or None when it does not exist or has no row."""
    if conn.execute("SELECT to_regclass('public.partkey_migration_state')").fetchone() == (None,):
        return None
    row = conn.execute("SELECT status, steps FROM partkey_migration_state WHERE target = 'public.chunks'").fetchone()
    return (row[0], [s["step"] for s in row[1]]) if row else None


def migrate_waits_on_lock(conn: psycopg.Connection[Any], statement: str) -> bool:
    """True while a partkey-migrate backend waits on a lock in a statement LIKE `statement`."""
    row = conn.execute(
        # This database's only: with xdist, another test's run may wait on a lock in its own database.
        "SELECT 1 FROM pg_stat_activity WHERE application_name = 'partkey-migrate' AND datname = current_database()"
        " AND wait_event_type = 'Lock' AND query LIKE %s",
        (statement,),
    ).fetchone()
    return row is not None


def assert_acknowledged_rows_landed(
    conn: psycopg.Connection[Any], acked: list[tuple[int, str]], errors: list[str], modulus: int = 10
) -> None:
    """No writer saw an error, and every acknowledged (id, collection) row is there with the right key."""
    assert errors == [], errors[:5]
    found = conn.execute(
        "SELECT id, collection_id::text, partition_key = abs(hashtext(collection_id::text) %% %s) "
        "FROM chunks WHERE id = ANY(%s)",
        (modulus, [row_id for row_id, _ in acked]),
    ).fetchall()
    assert {(r[0], r[1]) for r in found} == set(acked)
    assert all(r[2] for r in found)


def expected_key(conn: psycopg.Connection[Any], collection_id: str, modulus: int = 10) -> int:
    """The safe formula's value, computed by the server."""
    row = conn.execute("SELECT abs(hashtext(%s::uuid::text) %% %s)", (collection_id, modulus)).fetchone()
    assert row is not None
    return int(row[0])


def drift(conn: psycopg.Connection[Any], rows: int) -> None:
    """Give rows a wrong key as production does: UPDATE of collection_id (the trigger fires on INSERT)."""
    conn.execute(
        "UPDATE chunks SET collection_id = md5('drift' || id)::uuid WHERE id IN "
        "(SELECT id FROM chunks WHERE partition_key <> abs(hashtext(md5('drift' || id)::uuid::text) %% 10) "
        " ORDER BY id LIMIT %s)",
        (rows,),
    )

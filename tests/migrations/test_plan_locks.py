"""The lock each plan step claims is the lock PostgreSQL really takes (read from pg_locks, step by step)."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from tests.migrations.helpers import cli
from tests.migrations.test_generated_strategy import create_plain
from tests.schema import create_list_table, insert_rows

MODES = {
    "ACCESS EXCLUSIVE": "AccessExclusiveLock",
    "SHARE UPDATE EXCLUSIVE": "ShareUpdateExclusiveLock",
    "SHARE ROW EXCLUSIVE": "ShareRowExclusiveLock",
    "ACCESS SHARE": "AccessShareLock",
    "ROW EXCLUSIVE": "RowExclusiveLock",
}
STRENGTH = [
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
]


def claimed(lock: str) -> str | None:
    """The lock mode a plan's lock text names first, or None for 'none on the table'."""
    for text, mode in sorted(MODES.items(), key=lambda item: -len(item[0])):
        if lock.startswith(text):
            return mode
    return None


def strongest_on_table(conn: psycopg.Connection[Any]) -> str | None:
    """The strongest lock this session holds on chunks."""
    modes = [
        r[0]
        for r in conn.execute(
            "SELECT mode FROM pg_locks WHERE pid = pg_backend_pid() AND relation = 'chunks'::regclass"
        ).fetchall()
    ]
    return max(modes, key=STRENGTH.index) if modes else None


def run_steps_checking_locks(
    conn: psycopg.Connection[Any], dsn: str, *extra: str, downgrade: bool = True
) -> list[tuple[str, str | None]]:
    """Run each DDL step of the plan (and of the downgrade plan after it) and compare locks."""
    seen = []
    plans = [("plan", "--json", *extra)] + ([("plan", "--json", "--downgrade")] if downgrade else [])
    for args in plans:
        plan = json.loads(cli(dsn, *args).out)
        for step in plan["steps"]:
            if step["kind"] == "concurrent":
                conn.execute(step["statements"][0])  # cannot run in a transaction; SHARE UPDATE EXCLUSIVE
                continue
            with conn.transaction():
                for statement in step["statements"]:
                    conn.execute(statement)
                actual = strongest_on_table(conn)
            expected = claimed(step["lock"])
            assert actual == (expected or actual), (step["name"], step["lock"], actual)
            seen.append((step["name"], actual))
    return seen


def test_list_plan_locks(conn: psycopg.Connection[Any], dsn: str) -> None:
    create_list_table(conn, modulus=10, trigger="parent")
    insert_rows(conn, 500, modulus=10)
    seen = run_steps_checking_locks(conn, dsn)
    assert seen == [
        ("pre-verify", "AccessShareLock"),
        ("add-check", "AccessExclusiveLock"),
        ("validate-check", "ShareUpdateExclusiveLock"),
        ("drop-trigger", "AccessExclusiveLock"),
        ("create-trigger", "ShareRowExclusiveLock"),
        ("drop-check", "AccessExclusiveLock"),
    ]


@pytest.mark.parametrize("strategy", ["generated", "keep-trigger"])
def test_plain_plan_locks(conn: psycopg.Connection[Any], dsn: str, strategy: str) -> None:
    create_plain(conn, rows=500)
    # keep-trigger run by hand leaves a trigger and no state record: downgrade (rightly) refuses such a table.
    seen = dict(run_steps_checking_locks(conn, dsn, "--strategy", strategy, downgrade=strategy == "generated"))
    if strategy == "generated":
        assert seen["add-generated-column"] == "AccessExclusiveLock"
        assert seen["verify-new-column"] == "AccessShareLock"
        assert seen["swap"] == "AccessExclusiveLock"
        assert seen["swap-back"] == "AccessExclusiveLock"
    else:
        assert seen["fix-trigger"] is None  # CREATE OR REPLACE FUNCTION takes no lock on the table

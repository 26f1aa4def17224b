"""partkey-migrate downgrade under SIGKILL: killed at every step boundary, and in the middle of the backfill.

The steps come from the code (`plan --downgrade --json` on the upgraded table), so a new step is covered without
editing this file. Each step is a subtest on a database of its own: upgrade, start `downgrade` as a process that
pauses before the step (PARTKEY_MIGRATE_PAUSE_BEFORE), SIGKILL it there, then check what the user sees and that
both ways out end exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from tests.migrations.helpers import catalog, cli, keys, migrate_waits_on_lock, spawn, state
from tests.migrations.test_generated_strategy import create_plain
from tests.migrations.test_resume import migrate_backends, stderr_lines
from tests.pgserver import scratch_database
from tests.schema import create_list_table, insert_rows
from tests.support import poll

LIST_ROWS = 1000
PLAIN_ROWS = 2000
Fingerprint = dict[str, Any]


def create_list(conn: psycopg.Connection[Any]) -> None:
    """LIST by key, 10 partitions, the legacy trigger on the parent, one extra index; upgrade picks `check`."""
    create_list_table(conn, modulus=10, trigger="parent")
    conn.execute("CREATE INDEX chunks_collection_idx ON chunks (collection_id, partition_key)")
    insert_rows(conn, LIST_ROWS, modulus=10)


def create_plain_table(conn: psycopg.Connection[Any]) -> None:
    """Plain table with PK, key index, partial unique index and a bystander index; upgrade picks `generated`."""
    create_plain(conn, rows=PLAIN_ROWS)


SHAPES: dict[str, tuple[Callable[[psycopg.Connection[Any]], None], str]] = {
    "list": (create_list, "check"),
    "plain": (create_plain_table, "generated"),
}


def fingerprint(conn: psycopg.Connection[Any]) -> Fingerprint:
    """Catalog (indexes, constraints, triggers, columns, functions, relations) plus the data: count, key sum, rows."""
    count, key_sum = conn.execute("SELECT count(*), coalesce(sum(partition_key), 0) FROM chunks").fetchone() or (0, 0)
    return {**catalog(conn), "row_count": count, "key_sum": int(key_sum), "rows": keys(conn)}


def without(print_: Fingerprint, *names: str) -> Fingerprint:
    """The fingerprint less some of its parts."""
    return {k: v for k, v in print_.items() if k not in names}


def ok(run: Any) -> Any:
    """Assert a CLI run exited 0."""
    assert run.code == 0, (run.out, run.err)
    return run


def downgrade_steps(dsn: str) -> dict[str, str]:
    """The steps `downgrade` would run now, in order, with their kind, as the code plans them (the pause hook can
    stop before each one; only an upgrade's pre-verification runs outside that loop)."""
    plan = json.loads(ok(cli(dsn, "plan", "--downgrade", "--json")).out)
    return {step["name"]: step["kind"] for step in plan["steps"] if step["kind"] != "verify"}


@contextmanager
def fresh_database(admin_dsn: str, name: str) -> Iterator[tuple[str, psycopg.Connection[Any]]]:
    """A database of its own for one subtest (a failed step must not spoil the next one)."""
    with (
        scratch_database(admin_dsn, f"pkdk{os.getpid()}_{name}"[:63]) as url,
        psycopg.connect(url, autocommit=True) as conn,
    ):
        yield url, conn


def reference(admin_dsn: str, shape: str) -> dict[str, Any]:
    """Fingerprints of an uninterrupted run: before, upgraded, downgraded, upgraded again; and the step list."""
    create, strategy = SHAPES[shape]
    with fresh_database(admin_dsn, f"{shape}_ref") as (dsn, conn):
        create(conn)
        before = fingerprint(conn)
        assert "upgrade finished: state upgraded" in ok(cli(dsn, "upgrade")).out
        upgraded = fingerprint(conn)
        kinds = downgrade_steps(dsn)
        steps = list(kinds)
        ok(cli(dsn, "downgrade"))
        assert state(conn) == ("downgraded", steps)
        downgraded = fingerprint(conn)
        ok(cli(dsn, "upgrade"))
        assert fingerprint(conn) == upgraded  # the round trip is exact, so the table can go through it again
    # A finished downgrade gives the pre-upgrade table back. By design two things differ: the function is
    # re-created with the safe formula, and on the plain table the key column ends up last.
    differ = ("functions", "columns", "relations")
    assert without(downgraded, *differ) == without(before, *differ)
    assert [f[0] for f in downgraded["functions"]] == [f[0] for f in before["functions"]]
    assert sorted(downgraded["columns"]) == sorted(before["columns"])
    if shape == "list":
        assert downgraded["columns"] == before["columns"]
    assert set(downgraded["relations"]) - set(before["relations"]) == {
        "partkey_migration_state",
        "partkey_migration_state_pkey",
    }
    return {
        "before": before,
        "upgraded": upgraded,
        "downgraded": downgraded,
        "steps": steps,
        "kinds": kinds,
        "strategy": strategy,
    }


def kill_at(conn: psycopg.Connection[Any], dsn: str, step: str, *args: str, env: dict[str, str] | None = None) -> None:
    """Start `downgrade` paused before step, SIGKILL it there, wait until its backend is gone."""
    proc = spawn(dsn, "downgrade", *args, env={"PARTKEY_MIGRATE_PAUSE_BEFORE": step, **(env or {})})
    try:
        wait_for_line(proc, stderr_lines(proc), f"before step {step}")
    finally:
        proc.kill()
        proc.wait(timeout=10)
    poll(lambda: migrate_backends(conn) == 0, "the killed run's backend to go")


def wait_for_line(proc: subprocess.Popen[str], lines: queue.Queue[str], text: str, timeout: float = 30) -> None:
    """Block until the process logs a line containing text; fail at once if it exits first."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            assert proc.poll() is None, f"exited {proc.returncode} before {text!r}: {''.join(seen)}"
            continue
        seen.append(line)
        if text in line:
            return
    raise AssertionError(f"no {text!r} within {timeout}s: {''.join(seen)}")


def status_field(out: str, label: str) -> str:
    """The value of one `label: value` line of `partkey-migrate status`."""
    for line in out.splitlines():
        if line.startswith(label + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {label!r} line in:\n{out}")


# The plain table's six steps take ~40 s (a minute and more on a loaded machine): the slow tier runs that one. The
# bound is generous because each step spawns several CLI runs and a loaded CI machine went past 90 s.
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "shape", [pytest.param(s, marks=pytest.mark.slow) if s == "plain" else s for s in sorted(SHAPES)]
)
def test_downgrade_killed_before_each_step(admin_dsn: str, shape: str, subtests: Any) -> None:
    ref = reference(admin_dsn, shape)
    steps: list[str] = ref["steps"]
    # The code's own plan: the LIST table re-creates the trigger and drops the CHECK; the plain table goes online.
    assert len(steps) >= (2 if shape == "list" else 6), steps
    create, strategy = SHAPES[shape]
    for index, step in enumerate(steps):
        with subtests.test(step=step), fresh_database(admin_dsn, f"{shape}_{index}") as (dsn, conn):
            create(conn)
            ok(cli(dsn, "upgrade"))
            assert fingerprint(conn) == ref["upgraded"]

            kill_at(conn, dsn, step)
            done = steps[:index]
            assert state(conn) == ("downgrading", done)
            killed = fingerprint(conn)
            assert killed["rows"] == ref["before"]["rows"]  # no row lost or changed by the kill

            # What the user sees: the state, the steps done, and that upgrade is not an option right now.
            shown = ok(cli(dsn, "status")).out
            assert status_field(shown, "migration state") == "downgrading"
            assert status_field(shown, "steps done") == (", ".join(done) or "none")
            assert status_field(shown, "upgrade would use") == "refused"
            assert status_field(shown, "because") == (
                "a downgrade of public.chunks was interrupted; run downgrade again to finish it"
            )

            # The other way out, upgrade, is refused with that same reason and changes nothing.
            refused = cli(dsn, "upgrade")
            assert refused.code == 1
            assert refused.err.strip() == (
                "partkey-migrate: a downgrade of public.chunks was interrupted; run downgrade again to finish it"
            )
            assert "Traceback" not in refused.err
            assert fingerprint(conn) == killed

            # Downgrade again: it resumes and ends exactly where the uninterrupted downgrade ended.
            rerun = ok(cli(dsn, "downgrade"))
            assert "downgrade finished: state downgraded" in rerun.out
            assert "resuming the interrupted downgrade of public.chunks" in rerun.err
            # It runs the killed step and what follows; of the committed steps it repeats only the idempotent ones
            # that re-check their work (the backfill finds 0 rows, the verification, the index builds).
            started = re.findall(r"^partkey-migrate: step \d+/\d+ (\S+): .*\[lock: ", rerun.err, re.MULTILINE)
            assert started[-(len(steps) - index) :] == steps[index:], started
            assert [s for s in started[: -(len(steps) - index)] if ref["kinds"][s] == "ddl"] == [], started
            assert fingerprint(conn) == ref["downgraded"]
            assert state(conn) == ("downgraded", steps)
            assert ok(cli(dsn, "verify")).code == 0
            assert "nothing to do" in ok(cli(dsn, "downgrade")).out

            # And upgrade from there returns to exactly the upgraded state.
            ok(cli(dsn, "upgrade", "--strategy", strategy))
            assert fingerprint(conn) == ref["upgraded"]


@pytest.mark.timeout(60)
def test_downgrade_killed_between_backfill_batches(admin_dsn: str) -> None:
    ref = reference(admin_dsn, "plain")
    with fresh_database(admin_dsn, "plain_backfill") as (dsn, conn):
        create_plain_table(conn)
        ok(cli(dsn, "upgrade"))
        # Pause before the backfill just long enough to lock one row in the middle of the table: the batch that
        # reaches it waits (lock timeout 60 s), the batches before it have committed, the ones after never start.
        proc = spawn(
            dsn,
            "downgrade",
            "--batch-size",
            "100",
            "--lock-timeout",
            "60",
            env={"PARTKEY_MIGRATE_PAUSE_BEFORE": "backfill", "PARTKEY_MIGRATE_PAUSE_SECONDS": "1.5"},
        )
        try:
            wait_for_line(proc, stderr_lines(proc), "before step backfill")
            with psycopg.connect(dsn) as blocker:
                # (Not `ORDER BY ctid OFFSET n LIMIT 1 FOR UPDATE`: that locks the n rows it skips as well.)
                middle = blocker.execute(
                    "SELECT id FROM chunks WHERE ctid = (SELECT ctid FROM chunks ORDER BY ctid OFFSET %s LIMIT 1) "
                    "FOR UPDATE",
                    (PLAIN_ROWS // 2,),
                ).fetchone()
                assert middle is not None
                poll(
                    lambda: migrate_waits_on_lock(conn, "UPDATE%partition_key_old%"),
                    "the backfill to wait for its lock",
                )
                filled = conn.execute("SELECT count(partition_key_old) FROM chunks").fetchone()
                assert filled == (PLAIN_ROWS // 2,)  # the 10 batches before the locked row, 100 rows each
                proc.kill()
                proc.wait(timeout=10)
                # client_connection_check_interval (set by partkey-migrate on 14+) ends the orphan mid lock wait.
                poll(lambda: migrate_backends(conn) == 0, "the killed run's backend to go")
                blocker.rollback()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        # The waiting batch rolled back with its backend; the committed ones stay.
        assert conn.execute("SELECT count(partition_key_old) FROM chunks").fetchone() == filled
        assert state(conn) == ("downgrading", ["add-plain-copy"])
        shown = ok(cli(dsn, "status")).out
        assert status_field(shown, "migration state") == "downgrading"
        assert status_field(shown, "steps done") == "add-plain-copy"

        rerun = ok(cli(dsn, "downgrade", "--batch-size", "300"))
        left = PLAIN_ROWS - filled[0]
        assert f"step backfill: {left} row(s) in {-(-left // 300)} batch(es)" in rerun.err
        assert state(conn) == ("downgraded", ref["steps"])
        assert fingerprint(conn) == ref["downgraded"]
        wrong = conn.execute(
            "SELECT count(*) FROM chunks WHERE partition_key IS DISTINCT FROM abs(hashtext(collection_id::text) % 10)"
        ).fetchone()
        assert wrong == (0,)
        assert ok(cli(dsn, "verify")).code == 0

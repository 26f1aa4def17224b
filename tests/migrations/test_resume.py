"""Crash and resume: SIGKILL the upgrade between any two steps and in the middle of VALIDATE, then re-run."""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from typing import Any

import psycopg
import pytest

from tests.migrations.helpers import catalog, cli, keys, migrate_waits_on_lock, spawn, state
from tests.migrations.test_generated_strategy import PLAIN_STEPS, create_plain
from tests.schema import create_list_table, insert_rows
from tests.support import poll

LIST_STEPS = ["add-check", "validate-check", "drop-trigger"]


def stderr_lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    """A queue filled with the process's stderr lines by a reader thread."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


def wait_line(lines: queue.Queue[str], text: str, timeout: float = 30) -> None:
    """Block until a line containing text arrives."""
    deadline = time.monotonic() + timeout
    while True:
        line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        if text in line:
            return


def migrate_backends(conn: psycopg.Connection[Any]) -> int:
    """How many partkey-migrate backends the server still has."""
    # This database's only: with xdist, another test's run may be on the same server in its own database.
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'partkey-migrate' "
        "AND datname = current_database()"
    ).fetchone()
    return int(row[0]) if row else 0


def kill_before(conn: psycopg.Connection[Any], dsn: str, step: str, *command: str) -> None:
    """Start a run (default: upgrade) that pauses before step, SIGKILL it there, and wait until its backend is gone."""
    proc = spawn(dsn, *(command or ("upgrade",)), env={"PARTKEY_MIGRATE_PAUSE_BEFORE": step})
    wait_line(stderr_lines(proc), f"before step {step}")
    proc.kill()
    proc.wait(timeout=10)
    poll(lambda: migrate_backends(conn) == 0, "the killed run's backend to go")


@pytest.mark.parametrize("step", LIST_STEPS)
def test_list_upgrade_killed_before_each_step_finishes_on_rerun(
    conn: psycopg.Connection[Any], dsn: str, step: str
) -> None:
    create_list_table(conn, modulus=10, trigger="parent")
    insert_rows(conn, 1000, modulus=10)
    rows = keys(conn)
    kill_before(conn, dsn, step)
    done = LIST_STEPS[: LIST_STEPS.index(step)]
    assert state(conn) == ("upgrading", done)
    assert "migration state:               upgrading" in cli(dsn, "status").out
    rerun = cli(dsn, "upgrade")
    assert rerun.code == 0, rerun.err
    assert state(conn) == ("upgraded", LIST_STEPS)  # the record keeps the steps of both runs
    after = catalog(conn)
    assert after["triggers"] == []
    assert after["constraints"]["chunks_partition_key_check:true"].startswith("CHECK ((partition_key = abs(")
    assert keys(conn) == rows
    assert "nothing to do" in cli(dsn, "upgrade").out


@pytest.mark.parametrize("step", PLAIN_STEPS)
def test_plain_upgrade_killed_before_each_step_finishes_on_rerun(
    conn: psycopg.Connection[Any], dsn: str, step: str
) -> None:
    create_plain(conn, rows=1000)
    rows, before = keys(conn), catalog(conn)
    kill_before(conn, dsn, step)
    assert state(conn) == ("upgrading", PLAIN_STEPS[: PLAIN_STEPS.index(step)])
    rerun = cli(dsn, "upgrade")
    assert rerun.code == 0, rerun.err
    after = catalog(conn)
    assert after["indexes"] == before["indexes"]
    assert after["constraints"] == before["constraints"]
    assert [c[0] for c in after["columns"]] == ["id", "collection_id", "content", "partition_key"]
    assert after["columns"][-1][-1] == "s"
    assert keys(conn) == rows
    assert state(conn) == ("upgraded", PLAIN_STEPS)


def test_list_upgrade_killed_in_the_middle_of_validate_finishes_on_rerun(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    create_list_table(conn, modulus=10, trigger="parent")
    insert_rows(conn, 1000, modulus=10)
    proc = spawn(
        dsn,
        "upgrade",
        "--lock-timeout",
        "60",
        env={"PARTKEY_MIGRATE_PAUSE_BEFORE": "validate-check", "PARTKEY_MIGRATE_PAUSE_SECONDS": "1"},
    )
    lines = stderr_lines(proc)
    wait_line(lines, "before step validate-check")
    with psycopg.connect(dsn) as blocker:
        # Blocks the step on one partition only: it locks the parent first, then the partitions, and waits here.
        blocker.execute("LOCK TABLE chunks_part_05 IN SHARE UPDATE EXCLUSIVE MODE")
        poll(
            lambda: migrate_waits_on_lock(conn, "LOCK TABLE %chunks% IN SHARE UPDATE EXCLUSIVE MODE"),
            "the run to wait for its lock",
        )
        held = conn.execute(
            "SELECT l.relation::regclass::text FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE a.application_name = 'partkey-migrate' AND a.datname = current_database() AND l.granted "
            "AND l.mode = 'ShareUpdateExclusiveLock'"
        ).fetchall()
        assert ("chunks",) in held  # the validate-check step is under way: it holds the parent
        proc.kill()
        proc.wait(timeout=10)
        # client_connection_check_interval (set by partkey-migrate on 14+) ends the orphan even mid lock wait.
        poll(lambda: migrate_backends(conn) == 0, "the killed run's backend to go")
        blocker.rollback()
    assert state(conn) == ("upgrading", ["add-check"])
    assert "chunks_partition_key_check:false" in catalog(conn)["constraints"]
    rerun = cli(dsn, "upgrade")
    assert rerun.code == 0, rerun.err
    assert state(conn) == ("upgraded", LIST_STEPS)
    assert "chunks_partition_key_check:true" in catalog(conn)["constraints"]
    assert catalog(conn)["triggers"] == []


def test_an_invalid_index_left_by_an_interrupted_concurrent_build_is_rebuilt(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    create_plain(conn, rows=1000)
    before = catalog(conn)
    kill_before(conn, dsn, "build-index:chunks_key_idx")
    # A failed CREATE INDEX CONCURRENTLY leaves an INVALID index behind, as a build killed half-way would.
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("CREATE UNIQUE INDEX CONCURRENTLY chunks_key_idx_pkmig ON chunks (collection_id)")
    assert conn.execute(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'chunks_key_idx_pkmig'::regclass"
    ).fetchone() == (False,)
    run = cli(dsn, "upgrade")
    assert run.code == 0, run.err
    after = catalog(conn)
    assert after["indexes"] == before["indexes"]
    assert (
        after["indexes"]["chunks_key_idx"] == "CREATE INDEX chunks_key_idx ON public.chunks USING btree (partition_key)"
    )


@pytest.mark.parametrize("shape", ["list", "plain"])
def test_keep_trigger_upgrade_killed_before_its_step_finishes_on_rerun(
    conn: psycopg.Connection[Any], dsn: str, shape: str
) -> None:
    if shape == "list":
        create_list_table(conn, modulus=10, trigger="parent")
        insert_rows(conn, 1000, modulus=10)
    else:
        create_plain(conn, rows=1000)
    rows, before = keys(conn), catalog(conn)
    kill_before(conn, dsn, "fix-trigger", "upgrade", "--strategy", "keep-trigger")
    assert state(conn) == ("upgrading", [])
    killed = catalog(conn)
    # Nothing of the killed step remains; the only new relation is the state table (and its index).
    assert killed | {"relations": None} == before | {"relations": None}
    assert {r for r in killed["relations"] if not r.startswith("partkey_migration_state")} == set(before["relations"])
    assert "migration state:               upgrading" in cli(dsn, "status").out
    rerun = cli(dsn, "upgrade", "--strategy", "keep-trigger")
    assert rerun.code == 0, rerun.err
    assert state(conn) == ("kept-trigger", ["fix-trigger"])
    after = catalog(conn)
    assert after["triggers"] == before["triggers"] and after["indexes"] == before["indexes"]
    assert "% 10)" in dict(after["functions"])["compute_partition_key"]  # the safe formula now
    assert keys(conn) == rows

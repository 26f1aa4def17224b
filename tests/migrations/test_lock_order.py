"""Lock order under a semantik-shaped writer: the writer sees no error at all, and waits only as long as a step.

The writer is shaped like the real application's: single-row INSERTs through the parent that supply the key, no
lock_timeout of its own, on a LIST table with many indexes on every partition (issue 14, failure 9).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest

from exporter import chunks_schema
from tests.migrations.helpers import assert_acknowledged_rows_landed, cli, migrate_waits_on_lock, spawn
from tests.schema import LEGACY_TRIGGER_FUNCTION, create_list_table, insert_rows
from tests.support import poll

LOCK_TIMEOUT = 1.0  # the default, equal to deadlock_timeout: the case seen in production
INDEXES = 8
ROWS_PER_TRANSACTION = 3
THINK_SECONDS = 0.02


class Writer(threading.Thread):
    """The application: transactions of single-row INSERTs, its latency recorded; any error counts."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.acked: list[tuple[int, str]] = []
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        """Insert until stopped; no retry of anything: an error is a lost write."""
        statement = (
            "INSERT INTO chunks (collection_id, partition_key, content) "
            "VALUES (%(c)s::uuid, abs(hashtext(%(c)s::uuid::text) %% 10), 'load') RETURNING id"
        )
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stopping.is_set():
                done: list[tuple[int, str]] = []
                try:
                    # A few rows per transaction (the chunks of one request), each its own single-row INSERT.
                    with conn.transaction():
                        for _ in range(ROWS_PER_TRANSACTION):
                            collection = str(uuid.uuid4())
                            started = time.monotonic()
                            row = conn.execute(statement, {"c": collection}).fetchone()
                            self.latencies.append(time.monotonic() - started)
                            assert row is not None
                            done.append((int(row[0]), collection))
                            time.sleep(THINK_SECONDS)  # the application's own work between two INSERTs
                except psycopg.Error as error:
                    self.errors.append(f"{type(error).__name__}: {error}")
                    continue
                self.acked.extend(done)


def step_seconds(stderr: str) -> list[float]:
    """How long each step took, as the run logged it ("step 2/3 add-check: done in 12 ms")."""
    found = []
    for value, unit in re.findall(r"step \d+/\d+ [\w-]+: done in ([\d.]+) ?(ms|s|min)", stderr):
        found.append(float(value) * {"ms": 0.001, "s": 1.0, "min": 60.0}[unit])
    return found


@pytest.mark.timeout(180)
@pytest.mark.parametrize("trigger", ["parent", "partitions"])
def test_semantik_writer_sees_no_error_and_waits_at_most_a_step(
    conn: psycopg.Connection[Any], dsn: str, trigger: str
) -> None:
    create_list_table(conn, modulus=10, trigger=trigger)
    for number in range(INDEXES):
        conn.execute(
            f"CREATE INDEX chunks_extra_{number} ON chunks (content, id, created_at) WHERE id % {number + 2} = 0"
        )
    insert_rows(conn, 3000, modulus=10)
    writer = Writer(dsn)
    writer.start()
    time.sleep(0.3)
    runs = []
    for command in ("upgrade", "downgrade"):
        run = cli(dsn, command, "--lock-timeout", str(LOCK_TIMEOUT), "--max-attempts", "50")
        assert run.code == 0, run.err
        runs.append(run)
        time.sleep(0.3)
    writer.stopping.set()
    writer.join(timeout=30)

    assert writer.errors == []  # no deadlock, no lock timeout, nothing the application would have to retry
    assert_acknowledged_rows_landed(conn, writer.acked, writer.errors)
    steps = [seconds for run in runs for seconds in step_seconds(run.err)]
    assert steps, runs[0].err
    # A write waits at most for the migration's lock wait (lock_timeout) plus the step holding the lock; the 0.25 s
    # covers scheduling on 2 shared cores, far below what a deadlock (deadlock_timeout, 1 s) or a queue would add.
    bound = LOCK_TIMEOUT + max(steps) + 0.25
    assert max(writer.latencies) < bound, (max(writer.latencies), steps)


@pytest.mark.versioned("partkey-migrate parent-first locking")
@pytest.mark.parametrize("trigger", ["parent", "partitions"])
def test_every_multi_relation_step_locks_the_parent_first(
    conn: psycopg.Connection[Any], dsn: str, trigger: str
) -> None:
    if trigger == "parent" and conn.info.server_version < 130000:
        pytest.skip("PostgreSQL 11/12 have no row triggers on a partitioned table")
    create_list_table(conn, modulus=10, trigger=trigger)
    insert_rows(conn, 100, modulus=10)
    modes = {
        "add-check": "ACCESS EXCLUSIVE",
        "validate-check": "SHARE UPDATE EXCLUSIVE",
        "drop-trigger": "ACCESS EXCLUSIVE",
        "create-trigger": "SHARE ROW EXCLUSIVE",
        "drop-check": "ACCESS EXCLUSIVE",
    }
    seen = []
    for args in (("plan", "--json"), ("upgrade",), ("plan", "--json", "--downgrade")):
        run = cli(dsn, *args)
        assert run.code == 0, run.err
        if args[0] != "plan":
            continue
        for step in json.loads(run.out)["steps"]:
            if step["name"] in modes:
                assert step["statements"][0] == f'LOCK TABLE "public"."chunks" IN {modes[step["name"]]} MODE', step
                seen.append(step["name"])
    assert seen == ["add-check", "validate-check", "drop-trigger", "create-trigger", "drop-check"]


def collection_for(conn: psycopg.Connection[Any], key: int) -> str:
    """A collection id whose safe key is `key` (modulus 10), found by the server."""
    row = conn.execute(
        "SELECT c::text FROM (SELECT md5('writer' || g)::uuid AS c FROM generate_series(1, 1000) g) s "
        "WHERE abs(hashtext(c::text) %% 10) = %s LIMIT 1",
        (key,),
    ).fetchone()
    assert row is not None
    return str(row[0])


def waits_on_lock(conn: psycopg.Connection[Any], pid: int) -> bool:
    """True while backend `pid` waits for a heavyweight lock."""
    row = conn.execute("SELECT 1 FROM pg_locks WHERE pid = %s AND NOT granted", (pid,)).fetchone()
    return row is not None


def semantik_shaped_table(conn: psycopg.Connection[Any]) -> None:
    """LIST table, the legacy trigger on each partition (PG 11/12 allow no other), 8 indexes, the CHECK validated.

    The partitions are created from the last name to the first, so their OIDs run against their names: PG 11 locks
    a parent's partitions in OID order when an INSERT starts, partkey-migrate dropped the triggers in name order
    (as when partitions are named part_0 .. part_99, or were re-attached). With the CHECK in place already, the
    upgrade's only locking step is drop-trigger.
    """
    conn.execute(chunks_schema.chunks_table("public.chunks"))
    for key in reversed(range(10)):
        conn.execute(f"CREATE TABLE chunks_part_{key:02d} PARTITION OF chunks FOR VALUES IN ({key})")
    conn.execute(LEGACY_TRIGGER_FUNCTION.format(schema="public", modulus=10))
    for key in range(10):
        conn.execute(
            f"CREATE TRIGGER set_partition_key BEFORE INSERT ON chunks_part_{key:02d} "
            "FOR EACH ROW EXECUTE PROCEDURE compute_partition_key()"
        )
    for number in range(INDEXES):
        conn.execute(f"CREATE INDEX chunks_extra_{number} ON chunks (content, id) WHERE id % {number + 2} = 0")
    insert_rows(conn, 200, modulus=10)
    conn.execute(
        "ALTER TABLE chunks ADD CONSTRAINT chunks_partition_key_check "
        "CHECK (partition_key = abs(hashtext(collection_id::text) % 10))"
    )


@pytest.mark.versioned("partkey-migrate drop-trigger never deadlocks a writer")
@pytest.mark.timeout(180)
@pytest.mark.parametrize("writer_began", ["before the step", "during the step"])
def test_drop_trigger_never_deadlocks_a_writer_in_a_transaction(
    conn: psycopg.Connection[Any], dsn: str, writer_began: str
) -> None:
    """The production deadlock of issue 14 (failure 9), sequenced through pg_locks instead of left to luck.

    A third session holds chunks_part_05, so that a migration that locks partitions one by one stops half way,
    holding part_00..04. The writer, in one transaction, inserts into chunks_part_09 and then into chunks_part_00:
    either its first INSERT ran before the migration started ("before the step": it holds the parent and part_09),
    or both run while the migration waits for part_05 ("during the step"). Then part_05 is released.

    Parent first (main since df97c3b): the migration waits for the parent holding nothing, or holds the parent so
    that the writer waits for it whole; it never holds a partition the writer needs, and no one errs.

    With the old order (DROP TRIGGER on each partition, no LOCK TABLE on the parent), both cases failed with the
    writer's INSERT losing its write with `DeadlockDetected: deadlock detected` (40P01) after deadlock_timeout (1 s),
    as in production, run on 2026-11-30 on commit e40f4b7 (df97c3b^, the last one before the parent-first fix) and
    on main with plans._parent_first returning [] alike. "before the step" failed on PG 12 and 18 (its INSERT into
    part_00 waited for the migration, which then waited for part_09); "during the step" on PG 11, 12 and 18 (on 11
    the first INSERT locks every partition in OID order: it took part_09..05 and waited for part_04, which the
    migration held while it waited for part_05). "before the step" cannot deadlock on PG 11, where the first INSERT
    locks every partition before the migration starts.
    """
    semantik_shaped_table(conn)
    statement = "INSERT INTO chunks (collection_id, partition_key, content) VALUES (%s, %s, 'w') RETURNING id"
    last, first = collection_for(conn, 9), collection_for(conn, 0)
    errors: list[str] = []
    acked: list[tuple[int, str]] = []
    pending: list[tuple[int, str]] = []
    with psycopg.connect(dsn) as writer, psycopg.connect(dsn) as blocker:

        def insert(collection: str, key: int) -> None:
            """One single-row INSERT in the writer's open transaction; an error is the lost write."""
            try:
                pending.append((int(writer.execute(statement, (collection, key)).fetchone()[0]), collection))  # type: ignore[index]
            except psycopg.Error as error:
                errors.append(f"{type(error).__name__}: {error}")

        if writer_began == "before the step":
            insert(last, 9)
        blocker.execute("LOCK TABLE chunks_part_05 IN ACCESS SHARE MODE")
        migration = spawn(dsn, "upgrade", "--lock-timeout", "120", "--max-attempts", "1")
        try:
            poll(lambda: migrate_waits_on_lock(conn, "%"), "the migration waits for a lock")

            def rest() -> None:
                """The rest of the writer's transaction (stops at the first error, as the application would)."""
                if writer_began == "during the step":
                    insert(last, 9)
                if not errors:
                    insert(first, 0)

            inserting = threading.Thread(target=rest, daemon=True)
            inserting.start()
            writer_pid = writer.info.backend_pid
            poll(lambda: not inserting.is_alive() or waits_on_lock(conn, writer_pid), "the writer ends or waits")
            waited = inserting.is_alive()
            blocker.commit()  # the migration goes on: with the old order it now waits for the writer, a deadlock
            inserting.join(timeout=120)
            assert not inserting.is_alive()
            if errors:
                writer.rollback()
            else:
                writer.commit()
                acked.extend(pending)
            _, err = migration.communicate(timeout=120)
        finally:
            if migration.poll() is None:
                migration.kill()
                migration.communicate()
    assert errors == []  # the write the application would have lost
    if writer_began == "before the step":
        assert not waited  # it holds the parent: the migration waits for it and holds nothing it needs
    assert migration.returncode == 0, err
    assert_acknowledged_rows_landed(conn, acked, errors)
    assert len(acked) == 2
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname = 'set_partition_key'").fetchone() == (0,)

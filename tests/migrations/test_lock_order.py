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

from tests.migrations.helpers import assert_acknowledged_rows_landed, cli
from tests.schema import create_list_table, insert_rows

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

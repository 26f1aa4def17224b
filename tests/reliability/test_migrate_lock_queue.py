"""partkey-migrate behind a long transaction: how long do other sessions queue behind its ACCESS EXCLUSIVE request?

A session holds a lock on chunks in an open transaction. `upgrade` (check strategy: its first step, ADD CHECK
NOT VALID, needs ACCESS EXCLUSIVE) queues behind it, and while it queues every new query on chunks queues behind
it in turn. Prober sessions run SELECTs and INSERTs in a loop and time each query. With `--lock-timeout 0.2` the
request gives up after 0.2 s, sleeps outside any transaction and tries again, so no query should wait much longer
than 0.2 s; with `--lock-timeout 5` they do, which shows that the measurement sees queueing at all.
The measured numbers are printed (`[reliability] ...`).
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from migrations.options import Options
from tests.migrations.helpers import (
    assert_acknowledged_rows_landed,
    catalog,
    cli,
    keys,
    migrate_waits_on_lock,
    spawn,
    state,
)
from tests.migrations.test_resume import migrate_backends
from tests.schema import create_list_table, insert_rows
from tests.support import poll

SHORT = 0.2  # --lock-timeout of the runs under test
MARGIN = 1.0  # a shared, noisy 2-core machine: scheduling, the probers' own round trips, the server's lock manager
BOUND = SHORT + MARGIN
LIST_STEPS = ["add-check", "validate-check", "drop-trigger"]
RETRY = re.compile(r"step add-check: lock timeout \(55P03\) on attempt (\d+)/(\d+); retrying in ([0-9.]+)s")


@pytest.fixture
def list_table(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """10 partitions, 2000 rows, the legacy trigger on the parent: upgrade picks the check strategy."""
    create_list_table(conn, modulus=10, trigger="parent")
    insert_rows(conn, 2000, modulus=10)
    return conn


class Prober(threading.Thread):
    """One session running a simple query on chunks in a loop, timing each one."""

    def __init__(self, dsn: str, kind: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.kind = kind
        self.waits: list[float] = []
        self.inserted: list[tuple[int, str]] = []
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        """SELECT by primary key, or INSERT a row with its key as the application sends it; 10 ms apart."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '30s'")  # the probers wait as long as the queue makes them
            n = 0
            while not self.stopping.is_set():
                n += 1
                collection = str(uuid.uuid4())
                started = time.monotonic()
                try:
                    if self.kind == "select":
                        conn.execute("SELECT id, partition_key FROM chunks WHERE id = %s", (n % 2000 + 1,)).fetchall()
                    else:
                        row = conn.execute(
                            "INSERT INTO chunks (collection_id, partition_key, content) "
                            "VALUES (%(c)s::uuid, abs(hashtext(%(c)s::uuid::text) %% 10), 'probe') RETURNING id",
                            {"c": collection},
                        ).fetchone()
                        assert row is not None
                        self.inserted.append((int(row[0]), collection))
                except psycopg.Error as error:
                    self.errors.append(f"{type(error).__name__}: {error}")
                self.waits.append(time.monotonic() - started)
                self.stopping.wait(0.01)


@dataclass
class Measured:
    """What the probers saw while one upgrade ran."""

    waits: list[float] = field(default_factory=list)
    inserted: list[tuple[int, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def worst(self) -> float:
        """The longest any query took."""
        return max(self.waits)

    def line(self, what: str) -> str:
        """One line for the report."""
        ordered = sorted(self.waits)
        p99 = ordered[int(0.99 * (len(ordered) - 1))]
        queued = sum(1 for w in self.waits if w > 0.05)
        return (
            f"lock queue, {what}: {len(self.waits)} queries, {queued} waited > 50 ms, "
            f"p99 {p99 * 1000:.0f} ms, max {self.worst * 1000:.0f} ms"
        )


@contextmanager
def probing(dsn: str) -> Iterator[Measured]:
    """Two SELECT and one INSERT sessions in a loop for the duration of the block."""
    probers = [Prober(dsn, "select"), Prober(dsn, "select"), Prober(dsn, "insert")]
    for prober in probers:
        prober.start()
    measured = Measured()
    try:
        poll(lambda: all(len(p.waits) >= 5 for p in probers), "every prober connected and running")
        yield measured
    finally:
        for prober in probers:
            prober.stopping.set()
        for prober in probers:
            prober.join(timeout=40)
        for prober in probers:
            measured.waits += prober.waits
            measured.inserted += prober.inserted
            measured.errors += prober.errors


def report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    """Print a measured figure even when pytest captures output."""
    with capsys.disabled():
        print(f"\n[reliability] {line}")


def hold(dsn: str, mode: str) -> psycopg.Connection[Any]:
    """A session in an open transaction holding a lock on chunks (and its partitions) until it ends."""
    blocker = psycopg.connect(dsn)
    if mode == "access share":
        blocker.execute("LOCK TABLE chunks IN ACCESS SHARE MODE")
    else:  # row share, plus row locks on the rows it read
        blocker.execute("SELECT id FROM chunks WHERE id <= 10 FOR UPDATE").fetchall()
    return blocker


@contextmanager
def blocked_upgrade(
    dsn: str, mode: str, *options: str
) -> Iterator[tuple[psycopg.Connection[Any], subprocess.Popen[str]]]:
    """A long transaction holding a lock (mode), and an upgrade started behind it; both ended on the way out."""
    blocker = hold(dsn, mode)
    proc = spawn(dsn, "upgrade", *options)
    try:
        yield blocker, proc
    finally:
        blocker.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def retries(err: str) -> list[tuple[int, float]]:
    """(attempt, pause before the next one) for each logged retry of the ACCESS EXCLUSIVE step."""
    return [(int(m[0]), float(m[2])) for m in RETRY.findall(err)]


def assert_backoff(found: list[tuple[int, float]], max_attempts: int) -> None:
    """Consecutive attempts, each pause in [d/2, d] for d = 0.2 s doubling: exponential backoff with jitter."""
    options = Options()
    assert [a for a, _ in found] == list(range(1, len(found) + 1)), found
    delay = options.backoff_initial
    for _, pause in found:
        cap = min(options.backoff_max, delay)
        assert cap / 2 - 0.01 <= pause <= cap + 0.01, found
        delay *= 2
    assert [p for _, p in found] == sorted(p for _, p in found), found
    assert len(found) < max_attempts


def wait_for_retries(proc: subprocess.Popen[str], count: int, timeout: float = 30) -> str:
    """Read stderr until the count-th retry line; return what was read."""
    assert proc.stderr is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while len(retries(seen)) < count:
        assert time.monotonic() < deadline, seen
        line = proc.stderr.readline()
        assert line, f"exited before {count} retries: {seen}"
        seen += line
    return seen


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["access share", "row share"])
def test_short_lock_timeout_bounds_the_queue_and_finishes_when_the_blocker_commits(
    list_table: psycopg.Connection[Any], dsn: str, mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = keys(list_table)
    with probing(dsn) as measured:
        with blocked_upgrade(dsn, mode, "--lock-timeout", str(SHORT), "--max-attempts", "20") as (blocker, proc):
            err = wait_for_retries(proc, 4)  # four attempts have queued and given up
            blocker.commit()  # the long transaction ends inside the retry bound
            out, rest = proc.communicate(timeout=30)
        err += rest
    report(capsys, measured.line(f"{mode} held, --lock-timeout {SHORT}, blocker commits after 4 attempts"))
    assert proc.returncode == 0, (out, err)
    assert "upgrade finished: state upgraded" in out
    found = retries(err)
    assert len(found) >= 4
    assert_backoff(found, 20)
    # (a) No query queued much longer than one attempt's lock_timeout, and some did queue: the probe works.
    assert measured.worst < BOUND, measured.line("")
    assert measured.worst >= SHORT / 2, measured.line("")
    # (c) Finished: the CHECK is validated, the trigger is gone, old rows untouched, new rows right.
    assert state(list_table) == ("upgraded", LIST_STEPS)
    after = catalog(list_table)
    assert after["triggers"] == []
    assert after["constraints"]["chunks_partition_key_check:true"].startswith("CHECK ((partition_key = abs(")
    now = keys(list_table)
    assert {i: now[i] for i in rows} == rows
    assert_acknowledged_rows_landed(list_table, measured.inserted, measured.errors)


@pytest.mark.timeout(60)
def test_exhausted_retries_exit_4_and_leave_the_catalog_unchanged(
    list_table: psycopg.Connection[Any], dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before, rows = catalog(list_table), keys(list_table)
    options = ("--lock-timeout", str(SHORT), "--max-attempts", "4")
    with probing(dsn) as measured, blocked_upgrade(dsn, "access share", *options) as (_, proc):
        out, err = proc.communicate(timeout=30)
    report(capsys, measured.line(f"access share held throughout, --lock-timeout {SHORT} --max-attempts 4"))
    # (d) A clear refusal, exit 4 (no lock: re-run later), no traceback.
    assert proc.returncode == 4, (out, err)
    assert_backoff(retries(err), 4)
    assert len(retries(err)) == 3
    assert "step add-check: lock timeout on attempt 4/4, giving up" in err
    assert err.splitlines()[-1] == (
        "partkey-migrate: step add-check: no lock within 0.2s after 4 attempts "
        "(canceling statement due to lock timeout); nothing of this step was applied, re-run later"
    )
    assert "Traceback" not in err
    assert measured.worst < BOUND, measured.line("")
    assert measured.worst >= SHORT / 2, measured.line("")
    poll(lambda: migrate_backends(list_table) == 0, "the killed run's backend to go")
    # The catalog as it was (only the state table is new); the state table says where it stopped.
    after = catalog(list_table)
    assert {k: v for k, v in after.items() if k != "relations"} == {k: v for k, v in before.items() if k != "relations"}
    assert set(after["relations"]) - set(before["relations"]) == {
        "partkey_migration_state",
        "partkey_migration_state_pkey",
    }
    assert state(list_table) == ("upgrading", [])
    shown = cli(dsn, "status").out
    assert "migration state:               upgrading" in shown
    assert "steps done:                    none" in shown
    now = keys(list_table)
    assert {i: now[i] for i in rows} == rows
    assert_acknowledged_rows_landed(list_table, measured.inserted, measured.errors)
    # Once the long transaction is gone, the same command resumes and finishes.
    rerun = cli(dsn, "upgrade", "--lock-timeout", str(SHORT))
    assert rerun.code == 0, rerun.err
    assert state(list_table) == ("upgraded", LIST_STEPS)


@pytest.mark.timeout(60)
def test_a_long_lock_timeout_makes_others_queue_past_the_bound(
    list_table: psycopg.Connection[Any], dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The control: the same probe with --lock-timeout 5 measures waits above the bound the tests above assert."""
    held_for = 2.0
    options = ("--lock-timeout", "5", "--max-attempts", "1")
    with probing(dsn) as measured, blocked_upgrade(dsn, "access share", *options) as (blocker, proc):
        poll(lambda: migrate_waits_on_lock(list_table, "LOCK TABLE%"), "the add-check step to wait, parent first")
        time.sleep(held_for)
        blocker.commit()
        out, err = proc.communicate(timeout=30)
    report(capsys, measured.line(f"access share held {held_for:.0f} s, --lock-timeout 5 (control)"))
    assert proc.returncode == 0, (out, err)
    assert measured.worst > BOUND, measured.line("")  # the measurement does see a queue when there is one
    assert_acknowledged_rows_landed(list_table, measured.inserted, measured.errors)

"""Safety: lock-timeout retries, one run at a time, dry-run, statement timeout."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from tests.migrations.helpers import catalog, cli, drift, spawn, state
from tests.schema import create_list_table, insert_rows
from tests.support import poll


@pytest.fixture
def list_table(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """10 partitions, 2000 rows, the legacy trigger on the parent."""
    create_list_table(conn, modulus=10, trigger="parent")
    insert_rows(conn, 2000, modulus=10)
    return conn


def migrate_backend_states(conn: psycopg.Connection[Any]) -> list[str]:
    """The state of every partkey-migrate backend right now."""
    rows = conn.execute(
        # This database's only: with xdist, another test's run may be on the same server in its own database.
        "SELECT state FROM pg_stat_activity WHERE application_name = 'partkey-migrate' AND pid <> pg_backend_pid() "
        "AND datname = current_database()"
    ).fetchall()
    return [r[0] for r in rows]


def lock_waiter(conn: psycopg.Connection[Any]) -> int | None:
    """The pid of a partkey-migrate backend waiting for a lock, if any."""
    row = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'partkey-migrate' AND wait_event_type = 'Lock' "
        "AND datname = current_database()"
    ).fetchone()
    return int(row[0]) if row else None


def test_lock_timeout_is_retried_with_backoff_outside_any_transaction(
    list_table: psycopg.Connection[Any], dsn: str
) -> None:
    samples: list[str] = []
    with psycopg.connect(dsn) as blocker:
        blocker.execute("SELECT 1 FROM chunks LIMIT 1")  # ACCESS SHARE, held until the rollback below

        def release_later() -> None:
            """Release once a lock wait was seen and then the backoff's idle time: not after a fixed delay, which a
            loaded machine can spend before the run even reaches its first step."""
            with psycopg.connect(dsn, autocommit=True) as watcher:
                deadline = time.monotonic() + 60
                waited = False
                while time.monotonic() < deadline and not (waited and samples.count("idle") >= 3):
                    waited = waited or lock_waiter(watcher) is not None
                    if waited:
                        samples.extend(migrate_backend_states(watcher))
                    time.sleep(0.01)
            blocker.rollback()

        thread = threading.Thread(target=release_later)
        thread.start()
        run = cli(dsn, "upgrade", "--lock-timeout", "0.2", "--max-attempts", "30")
        thread.join()
    assert run.code == 0, run.err
    assert "step add-check: lock timeout (55P03) on attempt 1/30; retrying in" in run.err
    assert catalog(list_table)["triggers"] == []
    # Between attempts the backend sits idle, not idle in transaction: the sleep holds no transaction open.
    assert samples.count("idle") >= 3, samples
    # A backoff sleep inside a transaction would turn those idle samples into 'idle in transaction' ones; a few of
    # those come from between a step's statements, more of them on a loaded machine (6 were seen), so the test
    # compares the two counts instead of bounding one by a number of 10 ms samples.
    assert samples.count("idle in transaction") < samples.count("idle"), samples


def test_exhausted_retries_stop_cleanly_and_a_rerun_resumes(list_table: psycopg.Connection[Any], dsn: str) -> None:
    before = catalog(list_table)
    with psycopg.connect(dsn) as blocker:
        blocker.execute("SELECT 1 FROM chunks LIMIT 1")
        run = cli(dsn, "upgrade", "--lock-timeout", "0.1", "--max-attempts", "3")
        blocker.rollback()
    assert run.code == 4  # no lock: re-run later
    assert "step add-check: lock timeout on attempt 3/3, giving up" in run.err
    assert "no lock within 0.1s after 3 attempts" in run.err
    after = catalog(list_table)
    assert {k: v for k, v in after.items() if k != "relations"} == {k: v for k, v in before.items() if k != "relations"}
    assert state(list_table) == ("upgrading", [])
    assert "migration state:               upgrading" in cli(dsn, "status").out
    rerun = cli(dsn, "upgrade")
    assert rerun.code == 0, rerun.err
    assert state(list_table) == ("upgraded", ["add-check", "validate-check", "drop-trigger"])


def test_a_second_concurrent_run_is_refused_with_a_clear_message(list_table: psycopg.Connection[Any], dsn: str) -> None:
    with psycopg.connect(dsn) as blocker:
        blocker.execute("SELECT 1 FROM chunks LIMIT 1")
        first = spawn(dsn, "upgrade", "--lock-timeout", "30")
        try:
            poll(lambda: lock_waiter(list_table) is not None, "the run to wait for its lock")
            pid = lock_waiter(list_table)
            second = cli(dsn, "upgrade")
            assert second.code == 1
            assert f"another partkey-migrate run is working on public.chunks (backend pid {pid}" in second.err
            assert "Traceback" not in second.err
        finally:
            blocker.rollback()
        _, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert state(list_table) == ("upgraded", ["add-check", "validate-check", "drop-trigger"])


def test_dry_run_changes_nothing_in_the_catalog(list_table: psycopg.Connection[Any], dsn: str) -> None:
    before = catalog(list_table)
    run = cli(dsn, "upgrade", "--dry-run")
    assert run.code == 0, run.err
    assert "would run step 1: add CHECK chunks_partition_key_check NOT VALID" in run.out
    assert "pre-verification: rows checked: 2000, wrong keys: 0" in run.out
    assert run.out.rstrip().endswith("dry run: nothing was changed")
    assert catalog(list_table) == before  # no CHECK, trigger kept, no state table either
    assert cli(dsn, "downgrade", "--dry-run").code == 1  # never upgraded: refused, as the real run is
    assert catalog(list_table) == before


def test_dry_run_reports_the_refusal_on_wrong_keys(list_table: psycopg.Connection[Any], dsn: str) -> None:
    drift(list_table, 3)
    before = catalog(list_table)
    run = cli(dsn, "upgrade", "--dry-run")
    assert run.code == 1
    assert "upgrade would refuse: wrong keys found; run partkey-migrate repair first" in run.out
    assert catalog(list_table) == before


def test_statement_timeout_applies_to_ddl_but_not_to_the_verification_scan(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    conn.execute(
        "CREATE TABLE chunks (id bigint PRIMARY KEY, collection_id uuid NOT NULL, partition_key integer NOT NULL)"
    )
    conn.execute(
        "INSERT INTO chunks SELECT g, md5(g::text)::uuid, abs(hashtext(md5(g::text)::uuid::text) % 10) "
        "FROM generate_series(1, 400000) g"
    )
    # A reader holds ACCESS SHARE, so the rewrite's ACCESS EXCLUSIVE waits; with lock_timeout far above the
    # statement timeout, it is the statement timeout that ends the DDL (a rewrite alone can beat 0.25 s on a quiet box).
    with psycopg.connect(dsn) as reader:
        reader.execute("SELECT 1 FROM chunks LIMIT 1")
        run = cli(dsn, "upgrade", "--statement-timeout", "0.25", "--lock-timeout", "30")
        reader.rollback()
    assert run.code == 3  # a database error mid-run
    assert "pre-verification: rows checked: 400000, wrong keys: 0" in run.out
    assert "canceling statement due to statement timeout" in run.err
    assert [c[0] for c in catalog(conn)["columns"]] == ["id", "collection_id", "partition_key"]
    assert cli(dsn, "upgrade").code == 0
    assert catalog(conn)["columns"][-1][-1] == "s"

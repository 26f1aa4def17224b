"""No lost data under load: a writer keeps inserting while upgrade and then downgrade run."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import psycopg
import pytest

from tests.migrations.helpers import assert_acknowledged_rows_landed, cli
from tests.migrations.test_generated_strategy import create_plain
from tests.schema import create_list_table, insert_rows


class Writer(threading.Thread):
    """Inserts one row per statement until stopped; retries lock timeouts, records anything else."""

    def __init__(self, dsn: str, supply_key: bool) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.supply_key = supply_key
        self.acked: list[tuple[int, str]] = []
        self.lock_timeouts = 0
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        """Insert, as the application would: with the key on the LIST table, without it on the plain one."""
        if self.supply_key:
            statement = (
                "INSERT INTO chunks (collection_id, partition_key, content) "
                "VALUES (%(c)s::uuid, abs(hashtext(%(c)s::uuid::text) %% 10), 'load') RETURNING id"
            )
        else:
            statement = "INSERT INTO chunks (collection_id, content) VALUES (%(c)s, 'load') RETURNING id"
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '300ms'")
            collection = str(uuid.uuid4())
            while not self.stopping.is_set():
                try:
                    row = conn.execute(statement, {"c": collection}).fetchone()
                except psycopg.errors.LockNotAvailable:
                    self.lock_timeouts += 1
                    continue  # the same row again: an application retry
                except psycopg.Error as error:
                    self.errors.append(f"{type(error).__name__}: {error}")
                    time.sleep(0.01)
                    continue
                assert row is not None
                self.acked.append((int(row[0]), collection))
                collection = str(uuid.uuid4())


def run_under_load(conn: psycopg.Connection[Any], dsn: str, supply_key: bool) -> Writer:
    """Upgrade, then downgrade, while the writer runs; return the writer after it stopped."""
    writer = Writer(dsn, supply_key)
    writer.start()
    time.sleep(0.3)
    marks = [len(writer.acked)]
    up = cli(dsn, "upgrade")
    assert up.code == 0, up.err
    time.sleep(0.3)
    marks.append(len(writer.acked))
    down = cli(dsn, "downgrade")
    assert down.code == 0, down.err
    time.sleep(0.3)
    writer.stopping.set()
    writer.join(timeout=30)
    marks.append(len(writer.acked))
    assert writer.errors == []
    assert marks[0] > 0 and marks[1] > marks[0] and marks[2] > marks[1], marks  # writes kept flowing
    return writer


def assert_all_acknowledged_rows_are_there(conn: psycopg.Connection[Any], writer: Writer, initial: int) -> None:
    """Every acknowledged row exists once, with its collection and the correct key; nothing else appeared."""
    assert_acknowledged_rows_landed(conn, writer.acked, writer.errors)
    assert conn.execute("SELECT count(*) FROM chunks").fetchone() == (initial + len(writer.acked),)


@pytest.mark.timeout(120)
def test_list_table_under_load(conn: psycopg.Connection[Any], dsn: str) -> None:
    create_list_table(conn, modulus=10, trigger="parent")
    insert_rows(conn, 5000, modulus=10)
    writer = run_under_load(conn, dsn, supply_key=True)
    assert_all_acknowledged_rows_are_there(conn, writer, 5000)
    assert cli(dsn, "verify").code == 0


@pytest.mark.timeout(120)
def test_plain_table_under_load(conn: psycopg.Connection[Any], dsn: str) -> None:
    create_plain(conn, rows=5000)
    writer = run_under_load(conn, dsn, supply_key=False)
    assert_all_acknowledged_rows_are_there(conn, writer, 5000)
    assert cli(dsn, "verify").code == 0

"""The shared PostgreSQL core: what a connection sends and leaves behind, read-only checks, scrubbing, lock retries."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from exporter import PartitionImplementationDetector
from exporter.app import Exporter
from exporter.pg import catalog
from exporter.pg.connect import connect
from exporter.pg.limits import set_local_limits
from exporter.pg.locks import Backoff, LockRetriesExhausted, retry_lock_timeouts
from exporter.pg.retry import retry
from exporter.pg.scrub import redact, scrub
from exporter.target import APPLICATION_NAME, Target
from tests.pgbouncer import semantik_chunks
from tests.support import assert_lock_timeout, config_for

ALL_CHECKS = """monotonic_column: id
modulus: 10
checks:
  distribution_exact: {enabled: true}
  insert_probe: {enabled: true, samples: 3}"""


def leftover_session_state(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """What a session would hand the next client of its pooled server connection."""
    settings = conn.execute("SELECT name, setting FROM pg_settings WHERE source = 'session' ORDER BY name").fetchall()
    prepared = conn.execute("SELECT name FROM pg_prepared_statements").fetchall()
    channels = conn.execute("SELECT pg_listening_channels()").fetchall()
    temp = conn.execute("SELECT pg_my_temp_schema()::int").fetchone()
    return {"settings": settings, "prepared": prepared, "channels": channels, "temp_schema": temp[0] if temp else None}


def sent_statements(trace: str) -> tuple[list[str], list[str]]:
    """From a libpq trace: the names given to Parse messages, and the text of every query sent (Query or Parse)."""
    names, queries = [], []
    for message in re.split(r"^\d{4}-\d\d-\d\d [\d:.]+\t", trace, flags=re.MULTILINE):
        parts = message.split("\t", 3)
        if len(parts) < 4 or parts[0] != "F":
            continue
        kind, body = parts[2], parts[3].strip()
        if kind == "Query":
            queries.append(body[1:-1])
        elif kind == "Parse":
            name, _, rest = body[1:].partition('" "')
            names.append(name)
            queries.append(rest[: rest.rindex('" ')])
    return names, queries


def test_daemon_checks_send_only_transaction_local_state(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Path
) -> None:
    semantik_chunks(conn, 10, rows=200)
    exporter = Exporter(config_for(dsn, ALL_CHECKS))
    target = exporter.targets["t1"]
    trace = tmp_path / "libpq.trace"
    try:
        with target.session() as session:
            pass  # opens the connection, so the trace below sees every check's statements
        with trace.open("w") as out:
            session.pgconn.trace(out.fileno())
            # psycopg prepares a statement from its fifth run on, unless prepare_threshold is None (and it
            # forgets its counts on a ROLLBACK, which ends every probe run): so each check runs six times in a row.
            for runner in exporter.runners.values():
                for _ in range(6):
                    result = runner.run()
                    assert result.success, (runner.key, result.error)
            session.pgconn.untrace()
        with target.session() as same:
            assert same is session
            parameters = same.info.get_parameters()
            state = leftover_session_state(same)
    finally:
        exporter.stop()
    sent = trace.read_text()
    names, queries = sent_statements(sent)
    assert queries, sent[:2000]
    assert set(names) == {""}, names  # only unnamed statements: nothing a pooled server connection keeps
    assert not [q for q in queries if re.match(r"\s*(SET|RESET)\s+(?!LOCAL\b|TRANSACTION\b)", q, re.IGNORECASE)]
    assert not [q for q in queries if re.search(r"\b(LISTEN|TEMP|TEMPORARY|PREPARE)\b", q, re.IGNORECASE)]
    assert not [q for q in queries if "set_config" in q and "true)" not in q]
    assert "BEGIN" in queries
    assert "options" not in parameters
    assert parameters.get("application_name") == APPLICATION_NAME
    assert state == {"settings": [], "prepared": [], "channels": [], "temp_schema": 0}


def test_a_write_inside_a_check_transaction_fails(conn: psycopg.Connection[Any], dsn: str) -> None:
    conn.execute("CREATE TABLE t (x int)")
    target = Target("t1", dsn, lock_timeout=0.3)
    try:
        with target.session() as session, session.transaction():
            target.begin_check(session, statement_timeout=5)
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction, match="read-only transaction"):
                session.execute("INSERT INTO t VALUES (1)")
        with target.session() as session:
            # Outside a check's transaction the session is as it was: nothing of the check stayed behind.
            assert leftover_session_state(session)["settings"] == []
            assert session.execute("SHOW transaction_read_only").fetchone() == ("off",)
    finally:
        target.close()
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_a_check_blocked_by_a_lock_gives_up_after_the_targets_lock_timeout(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    semantik_chunks(conn, 10, rows=0)
    exporter = Exporter(config_for(dsn, "modulus: 10", extra="", name="t1"))
    exporter.targets["t1"].lock_timeout = 0.2
    try:
        with psycopg.connect(dsn) as locker:
            locker.execute("LOCK TABLE chunks IN ACCESS EXCLUSIVE MODE")
            result = exporter.runners[("t1", "public.chunks", "distribution_exact")].run()
            locker.rollback()
    finally:
        exporter.stop()
    assert not result.success
    assert_lock_timeout(result.error, "0.2s")


def test_scrub_masks_known_secrets_and_password_shapes() -> None:
    assert scrub("auth failed for s3cret!", ["s3cret!"]) == "auth failed for ***"
    assert scrub("host=db password='a b' user=x") == "host=db password=*** user=x"
    assert scrub("postgresql://u:pw@db/x failed") == "postgresql://u:***@db/x failed"
    assert redact("could not use Hunter2 here", "host=db password=Hunter2") == "could not use *** here"
    assert redact("nothing secret", "not a dsn = = =") == "nothing secret"


def test_core_connection_is_tagged_and_never_prepares(dsn: str) -> None:
    with connect(dsn, application_name="partkey-core-test", connect_timeout=2) as conn:
        assert conn.prepare_threshold is None
        assert conn.autocommit
        with conn.transaction():
            set_local_limits(conn, lock_timeout=0.5, statement_timeout=2, read_only=True)
            assert conn.execute(
                "SELECT current_setting('lock_timeout'), current_setting('statement_timeout')"
            ).fetchone() == ("500ms", "2s")
            assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
        assert conn.execute(
            "SELECT current_setting('lock_timeout'), current_setting('application_name')"
        ).fetchone() == (
            "0",
            "partkey-core-test",
        )


def test_lock_retries_back_off_then_give_up_with_the_callers_words(
    conn: psycopg.Connection[Any], dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    conn.execute("CREATE TABLE t (x int)")
    attempts: list[int] = []
    log = logging.getLogger("partkey-core-test")
    with psycopg.connect(dsn) as locker, connect(dsn, application_name="partkey-core-test", connect_timeout=2) as run:
        locker.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")

        def attempt() -> None:
            attempts.append(1)
            with run.transaction():
                set_local_limits(run, lock_timeout=0.05, statement_timeout=5)
                run.execute("SELECT * FROM t")

        with caplog.at_level(logging.WARNING, "partkey-core-test"), pytest.raises(LockRetriesExhausted) as raised:
            retry_lock_timeouts(
                attempt, "read t", Backoff(3, 0.01, 0.02), log, lambda n, error: f"gave up after {n}: {error}"
            )
    assert len(attempts) == 3
    assert str(raised.value).startswith("gave up after 3: canceling statement due to lock timeout")
    assert [r.getMessage().split(";")[0] for r in caplog.records if r.levelno == logging.WARNING] == [
        "read t: lock timeout (55P03) on attempt 1/3",
        "read t: lock timeout (55P03) on attempt 2/3",
    ]


def test_one_retry_loop_tells_each_failure_and_raises_the_last_or_a_foreign_error() -> None:
    """retry() serves both lock-timeout and recovery-conflict retries: what it retries is the caller's predicate."""
    assert [Backoff(5, 0.1, 0.3, jitter=False).pause(n) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.3, 0.3]
    assert all(0.05 <= Backoff(5, 0.1, 0.3).pause(1) <= 0.1 for _ in range(50))
    told: list[tuple[int, str, float | None]] = []
    results: Iterator[Exception | str] = iter([KeyError("a"), KeyError("b"), "done"])

    def attempt() -> str:
        result = next(results)
        if isinstance(result, Exception):
            raise result
        return result

    def failed(number: int, error: Exception, pause: float | None) -> None:
        told.append((number, str(error), pause))

    def is_key_error(error: Exception) -> bool:
        return isinstance(error, KeyError)

    assert retry(attempt, is_key_error, Backoff(3, 0.0, 0.0, jitter=False), failed) == "done"
    assert told == [(1, "'a'", 0.0), (2, "'b'", 0.0)]
    told.clear()
    results = iter([KeyError("a"), KeyError("b")])
    with pytest.raises(KeyError, match="b"):
        retry(attempt, is_key_error, Backoff(2, 0.0, 0.0, jitter=False), failed)
    assert told == [(1, "'a'", 0.0), (2, "'b'", None)]
    told.clear()
    results = iter([ValueError("not ours")])
    with pytest.raises(ValueError, match="not ours"):
        retry(attempt, is_key_error, Backoff(3, 0.0, 0.0, jitter=False), failed)
    assert told == []


def test_the_detector_never_prepares_on_a_borrowed_connection(conn: psycopg.Connection[Any], dsn: str) -> None:
    semantik_chunks(conn, 10, rows=100)
    with psycopg.connect(dsn) as app:  # psycopg's defaults: prepare from the fifth run on
        detector = PartitionImplementationDetector(app, modulus=10)
        for _ in range(6):
            assert detector.verify_partition_keys("full").rows_checked == 100
            assert detector.get_performance_metrics().source == "estimate"
        assert app.prepare_threshold == 5  # the application's setting is back
        assert app.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)


def test_core_connect_takes_libpq_parameters_apart(dsn: str) -> None:
    params: dict[str, Any] = {k: v for k, v in conninfo_to_dict(dsn).items() if k != "password" or v}
    with connect(application_name="partkey-migrate", connect_timeout=2, **params) as conn:
        assert conn.prepare_threshold is None
        assert conn.info.dbname == params["dbname"]
        assert conn.execute("SELECT current_setting('application_name')").fetchone() == ("partkey-migrate",)


def test_leaf_partitions_walk_every_level_and_leave_out_the_table(conn: psycopg.Connection[Any]) -> None:
    """The shared tree finds leaves under a sub-partitioned partition and the DEFAULT; the table is not a leaf."""
    conn.execute(
        """CREATE TABLE t (k int, v int) PARTITION BY LIST (k);
           CREATE TABLE t_1 PARTITION OF t FOR VALUES IN (1) PARTITION BY LIST (v);
           CREATE TABLE t_1a PARTITION OF t_1 FOR VALUES IN (1);
           CREATE TABLE t_1b PARTITION OF t_1 FOR VALUES IN (2);
           CREATE TABLE t_2 PARTITION OF t FOR VALUES IN (2);
           CREATE TABLE t_d PARTITION OF t DEFAULT"""
    )
    oid = catalog.table_oid(conn, psycopg.sql.Identifier("public", "t"))
    leaves = catalog.leaf_partitions(conn, oid)
    assert [(r["relname"], r["is_default"]) for r in leaves] == [
        ("t_1a", False),
        ("t_1b", False),
        ("t_2", False),
        ("t_d", True),
    ]
    tree = conn.execute(catalog.relation_tree("%s::oid") + "SELECT relid::regclass::text, parent FROM tree", (oid,))
    assert sorted((name, int(parent) == 0) for name, parent in tree) == [
        ("t", True),
        ("t_1", False),
        ("t_1a", False),
        ("t_1b", False),
        ("t_2", False),
        ("t_d", False),
    ]

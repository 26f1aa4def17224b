"""PostgreSQL restarts and killed backends under a running exporter: up tells the truth, series stay whole."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from exporter.app import Exporter
from exporter.http import ExporterHTTPServer
from tests.reliability.harness import (
    PrivateServer,
    config,
    database_of,
    get,
    our_backends,
    our_lock_waits,
    succeeded_since,
)
from tests.support import metrics, poll, serving

TT = {"target": "t1", "table": "public.chunks"}
CHECKED = ("implementation", "distribution", "verification_full")

# What libpq and psycopg say when the server ends a backend under a client: the server's own FATAL when it gets to
# send one (pg_terminate_backend, fast shutdown), else libpq's words for a socket that just closed or reset. Which
# one a client sees depends on whether it was reading when the FATAL arrived; a restart test judged on one of them
# failed 3 runs in 22.
KILLED_BACKEND = (
    "terminating connection due to administrator command",
    "terminating connection due to unexpected postmaster exit",
    "server closed the connection unexpectedly",
    "connection to server was lost",
    "could not receive data from server",
    "consuming input failed",
    "ssl connection has been closed unexpectedly",
    "the connection is closed",
    "connection already closed",
    "the database system is shutting down",
    # psycopg's own words once libpq has given up on the socket, and libpq's for a write or read on it afterwards
    "the connection is lost",
    "connection socket closed",
    "could not send data to server",
    "no connection to the server",
    "lost synchronization with server",
    "connection not open",
    "ssl syscall error",
)


def killed_backend(message: str | None) -> bool:
    """Whether MESSAGE is one of the ways a client learns its backend was killed."""
    return message is not None and any(words in message.lower() for words in KILLED_BACKEND)


@pytest.mark.parametrize(
    "message",
    [
        "terminating connection due to administrator command",
        "consuming input failed: server closed the connection unexpectedly\n"
        "\tThis probably means the server terminated abnormally\n\tbefore or while processing the request.",
        "connection failed: connection to server at 127.0.0.1, port 5432 failed: server closed the connection "
        "unexpectedly",
        "could not receive data from server: Connection reset by peer",
        "the connection is closed",
        "the connection is lost",
        "connection socket closed",
        "sending query failed: could not send data to server: Broken pipe",
        "sending query failed: no connection to the server",
        "SSL SYSCALL error: EOF detected",
    ],
)
def test_every_message_for_a_killed_backend_is_recognised(message: str) -> None:
    assert killed_backend(message) and killed_backend(f"target t1 is down: {message}")


def test_other_errors_are_not_taken_for_a_killed_backend() -> None:
    assert not killed_backend("canceling statement due to lock timeout")
    assert not killed_backend('relation "chunks" does not exist')
    assert not killed_backend(None)


@contextmanager
def running(dsn: str, **options: Any) -> Iterator[tuple[Exporter, ExporterHTTPServer]]:
    """An exporter with its scheduler running and its HTTP server up, once every check has succeeded."""
    exporter = Exporter(config(dsn, **options))
    with serving(exporter) as server:
        exporter.start()
        poll(lambda: all(_success(server, c) for c in CHECKED), "first successful run of every check")
        yield exporter, server


def _up(server: ExporterHTTPServer) -> float | None:
    return get(metrics(server.url), "partkey_up", target="t1")


def _success(server: ExporterHTTPServer, check: str) -> bool:
    return get(metrics(server.url), "partkey_check_success", **TT, check=check) == 1


def _series_names(server: ExporterHTTPServer) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return set(metrics(server.url))


def _retry_delays(caplog: pytest.LogCaptureFixture) -> list[float]:
    """The delays of the reconnect attempts logged (at debug) while the target is still down, in order."""
    return [
        float(m)
        for r in list(caplog.records)
        for m in re.findall(r"next attempt in (\d+)s", r.getMessage())
        if "still down" in r.getMessage()
    ]


def _loud(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    """Log lines at INFO or above from the exporter containing text."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.INFO and r.name.startswith("exporter") and text in r.getMessage()
    ]


@pytest.mark.slow
def test_restart_while_idle(table: str, own_server: PrivateServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="exporter")
    with running(table) as (exporter, server):
        before = _series_names(server)
        last_good = get(
            metrics(server.url), "partkey_check_last_success_timestamp_seconds", **TT, check="implementation"
        )
        target = exporter.targets["t1"]
        own_server.stop()
        poll(lambda: _up(server) == 0, "partkey_up 0")
        # A run may still have succeeded between reading last_good and the stop: the outage's value is read now.
        at_outage = get(
            metrics(server.url), "partkey_check_last_success_timestamp_seconds", **TT, check="implementation"
        )
        poll(lambda: len(_retry_delays(caplog)) >= 2, "two more reconnect attempts while the server is away")
        during = metrics(server.url)
        restarted_at = time.time()  # before the start: the comeback can finish before pg_ctl returns
        own_server.start()
        poll(lambda: _up(server) == 1, "partkey_up back to 1")
        poll(lambda: all(succeeded_since(exporter, c, restarted_at) for c in CHECKED), "checks succeed")
        poll(lambda: all(_success(server, c) for c in CHECKED), "every check succeeds again")
        after = _series_names(server)
        assert exporter.targets["t1"] is target and exporter.scheduler is not None  # the same daemon, never restarted
        with psycopg.connect(own_server.admin_dsn) as admin:
            assert len(our_backends(admin, database=database_of(table))) == 1  # one connection, not one per attempt
    # up fell while the server was away and came back without a restart of the daemon (how fast is no test's
    # business on 2 shared cores: the polls above are hang guards).
    # While down: every check says it failed, and the last good values keep their (old) timestamp.
    for check in CHECKED:
        assert get(during, "partkey_check_success", **TT, check=check) == 0
    assert at_outage is not None and last_good is not None and at_outage >= last_good
    assert get(during, "partkey_check_last_success_timestamp_seconds", **TT, check="implementation") == at_outage
    assert set(during) == before  # nothing new appeared while down, nothing vanished
    assert after == before  # no duplicate (parse() fails on one) and no stale or extra series
    # The outage and the recovery are each logged once; the attempts in between only at debug, with growing delays.
    assert len(_loud(caplog, "target t1 is down")) == 1, _loud(caplog, "target t1")
    recovered = _loud(caplog, "target t1 is back up")
    assert len(recovered) == 1
    attempts = int(re.search(r"after (\d+) failed attempts", recovered[0]).group(1))  # type: ignore[union-attr]
    assert attempts >= 3  # it kept trying during the outage ...
    delays = _retry_delays(caplog)
    assert delays == sorted(delays) and delays[-1] >= 2  # ... backing off: 1 s, 2 s, 4 s ...
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and "is down" not in r.getMessage()]


def test_restart_in_the_middle_of_a_check(
    table: str, own_server: PrivateServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="exporter")
    options = {"lock_timeout": "30s", "checks": {"verification_full": "{interval: 1s, statement_timeout: 60s}"}}
    with running(table, **options) as (exporter, server):
        before = _series_names(server)
        locker = psycopg.connect(table)
        locker.execute("LOCK TABLE chunks IN ACCESS EXCLUSIVE MODE")
        with psycopg.connect(own_server.admin_dsn, autocommit=True) as admin:
            poll(lambda: our_lock_waits(admin, database_of(table)), "a check waiting on the lock")
        restarted_at = time.time()
        own_server.restart()
        # The reconnect watcher may bring the target back within half a second, between two polls of up: the log
        # line says the outage was noticed whenever it was.
        poll(
            lambda: _up(server) == 0 or exporter.targets["t1"].up is False or _loud(caplog, "target t1 is down"),
            "the outage noticed",
        )
        poll(lambda: _up(server) == 1, "partkey_up back to 1")
        failed = exporter.store.latest("t1", "public.chunks", "verification_full")
        poll(lambda: all(succeeded_since(exporter, c, restarted_at) for c in CHECKED), "checks succeed")
        poll(lambda: all(_success(server, c) for c in CHECKED), "every check succeeds again")
        after = _series_names(server)
        with psycopg.connect(own_server.admin_dsn) as admin:
            assert len(our_backends(admin, database=database_of(table))) == 1
        locker.close()
    assert failed is not None
    assert after == before
    interrupted = _loud(caplog, "target t1 is down")
    assert len(interrupted) == 1 and killed_backend(interrupted[0]), interrupted
    assert len(_loud(caplog, "target t1 is back up")) == 1


def test_backend_terminated_between_queries(
    table: str, own_server: PrivateServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="exporter")
    with running(table) as (exporter, server):
        before = _series_names(server)
        with psycopg.connect(own_server.admin_dsn, autocommit=True) as admin:
            ((pid, _, _),) = poll(lambda: our_backends(admin, "idle", database_of(table)), "an idle exporter backend")
            killed_at = time.time()
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            poll(lambda: (b := our_backends(admin, database=database_of(table))) and b[0][0] != pid, "a new backend")
            poll(lambda: all(succeeded_since(exporter, c, killed_at) for c in CHECKED), "checks succeed")
            poll(lambda: all(_success(server, c) for c in CHECKED), "every check succeeds again")
            assert len(our_backends(admin, database=database_of(table))) == 1
        assert _up(server) == 1
        assert _series_names(server) == before
    assert len(_loud(caplog, "target t1 is down")) <= 1
    assert len(_loud(caplog, "target t1 is back up")) == len(_loud(caplog, "target t1 is down"))


def test_backend_terminated_mid_query(table: str, own_server: PrivateServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="exporter")
    options = {"lock_timeout": "30s", "checks": {"verification_full": "{interval: 1s, statement_timeout: 60s}"}}
    with running(table, **options) as (exporter, server):
        before = _series_names(server)
        with psycopg.connect(table) as locker, psycopg.connect(own_server.admin_dsn, autocommit=True) as admin:
            locker.execute("LOCK TABLE chunks IN ACCESS EXCLUSIVE MODE")
            ((pid, _),) = poll(lambda: our_lock_waits(admin, database_of(table)), "a check waiting on the lock")
            killed_at = time.time()
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            # The check whose query was killed; a check that comes along before the reconnect fails too, but
            # with "target t1 is down: <the kill>": that one is the backoff speaking, not a second kill.
            killed = poll(
                lambda: [
                    r
                    for r in exporter.store.current.results.values()
                    if not r.success
                    and killed_backend(r.error)
                    and r.error is not None
                    and not r.error.startswith("target t1 is down")
                ],
                "the killed check reported",
            )
            locker.rollback()
            poll(lambda: all(succeeded_since(exporter, c, killed_at) for c in CHECKED), "checks succeed")
            poll(lambda: all(_success(server, c) for c in CHECKED), "every check succeeds again")
            backends = our_backends(admin, database=database_of(table))
        assert _up(server) == 1
        assert _series_names(server) == before
    assert len(backends) == 1 and backends[0][0] != pid
    assert len(killed) == 1 and killed[0].error is not None, [(r.check, r.error) for r in killed]
    assert killed_backend(killed[0].error)
    assert len(_loud(caplog, "target t1 is down")) == 1
    assert len(_loud(caplog, "target t1 is back up")) == 1

"""Locks and slow queries: scrapes answer from the last good snapshot, one copy of a check, nothing left running.

That a scrape never waits for a blocked check is asserted by cause, not by the clock (a bound in milliseconds is a bet
on a shared 2-core machine): scrapes begin and end while one and the same lock wait of the check goes on. How fast
they are during a lock is measured by `make bench-peers` (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from apscheduler.events import EVENT_JOB_MAX_INSTANCES

from exporter.app import Exporter
from exporter.checks.base import Outcome
from exporter.http import ExporterHTTPServer
from tests.reliability.harness import config, get, our_backends, our_lock_waits, scrape
from tests.schema import create_list_table, insert_rows
from tests.support import metrics, parse, poll, serving

TT = {"target": "t1", "table": "public.chunks"}
CHECKED = ("implementation", "distribution", "verification_full")


class Overlap:
    """Wraps a check's run() and records the most copies ever running at once."""

    def __init__(self, check: Any) -> None:
        self.check = check
        self.inner = check.run
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.calls = 0
        check.run = self.run

    def run(self, conn: psycopg.Connection[Any]) -> Outcome:
        with self.lock:
            self.now += 1
            self.calls += 1
            self.most = max(self.most, self.now)
        try:
            return self.inner(conn)  # type: ignore[no-any-return]
        finally:
            with self.lock:
                self.now -= 1


@contextmanager
def running(dsn: str, **options: Any) -> Iterator[tuple[Exporter, ExporterHTTPServer, Overlap]]:
    """A scheduled exporter whose verification_full is watched for overlapping runs."""
    exporter = Exporter(config(dsn, **options))
    overlap = Overlap(exporter.runners[("t1", "public.chunks", "verification_full")].check)
    with serving(exporter) as server:
        exporter.start()
        poll(
            lambda: all(get(metrics(server.url), "partkey_check_success", **TT, check=c) == 1 for c in CHECKED),
            "first successful run of every check",
        )
        yield exporter, server, overlap


def _lock_wait(conn: psycopg.Connection[Any]) -> tuple[int, Any] | None:
    """(pid, query_start) of the exporter query waiting on a lock right now, if any: one wait, told from the next."""
    row = conn.execute(
        "SELECT pid, query_start FROM pg_stat_activity WHERE application_name = 'partkey-exporter' "
        "AND datname = current_database() AND state = 'active' AND wait_event_type = 'Lock'"
    ).fetchone()
    return (int(row[0]), row[1]) if row else None


class Scrapes:
    """Scrapes taken while a check is blocked: durations, parsed bodies, and how many fell within one lock wait."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self.bodies: list[dict[Any, float]] = []
        self.within_one_wait = 0

    def assert_served_without_waiting(self) -> None:
        """Some scrape began and ended during one and the same wait of the check: scrapes do not wait for it."""
        ordered = sorted(self.durations)
        summary = (
            f"{len(ordered)} scrapes, {self.within_one_wait} within one lock wait: "
            f"p50 {ordered[len(ordered) // 2] * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms"
        )
        print(summary)
        # A scrape that waited for the check would end after the wait did (lock_timeout or statement_timeout later),
        # so none would begin and end within one wait.
        assert self.within_one_wait >= 1, summary


def _scrape_while(server: ExporterHTTPServer, conn: psycopg.Connection[Any], seconds: float) -> Scrapes:
    """Scrape every 50 ms for a while, noting the check's lock wait before and after each scrape."""
    scrapes = Scrapes()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        before = _lock_wait(conn)
        status, took, body = scrape(server.url)
        assert status == 200
        scrapes.within_one_wait += before is not None and _lock_wait(conn) == before
        scrapes.durations.append(took)
        scrapes.bodies.append(parse(body))
        time.sleep(0.05)
    return scrapes


@pytest.fixture
def table(conn: psycopg.Connection[Any], dsn: str) -> str:
    create_list_table(conn, modulus=4, trigger=None)
    insert_rows(conn, 400, modulus=4)
    conn.execute("UPDATE chunks SET partition_key = (partition_key + 1) % 4 WHERE id IN (7, 8, 9)")
    conn.execute("ANALYZE chunks")
    return dsn


def test_access_exclusive_lock_scrapes_serve_last_good_snapshot(
    table: str, conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="exporter")
    caplog.set_level(logging.WARNING, logger="apscheduler")
    options = {"lock_timeout": "2s", "checks": {"verification_full": "{interval: 1s, statement_timeout: 20s}"}}
    with running(table, **options) as (_exporter, server, overlap):
        good = metrics(server.url)
        good_at = get(good, "partkey_check_last_success_timestamp_seconds", **TT, check="verification_full")
        with psycopg.connect(table) as locker:
            locker.execute("LOCK TABLE chunks IN ACCESS EXCLUSIVE MODE")
            locked_at = time.time()
            poll(lambda: our_lock_waits(conn), "a check waiting on the lock")
            scrapes = _scrape_while(server, conn, 5.0)
            blocked = metrics(server.url)
            waiting = our_lock_waits(conn)
            connections = our_backends(conn)
        poll(
            lambda: get(metrics(server.url), "partkey_check_success", **TT, check="verification_full") == 1,
            "verification succeeds after the lock is gone",
        )
    scrapes.assert_served_without_waiting()
    # Every scrape during the lock served the last good counts: 3 wrong keys, target up.
    assert {get(b, "partkey_mismatched_rows", **TT, mode="full") for b in scrapes.bodies} == {3}
    assert {get(b, "partkey_up", target="t1") for b in scrapes.bodies} == {1}
    # The blocked check says so on its own series, and its last good run's age is visible.
    assert get(blocked, "partkey_check_success", **TT, check="verification_full") == 0
    stale_at = get(blocked, "partkey_check_last_success_timestamp_seconds", **TT, check="verification_full")
    assert stale_at is not None and good_at is not None and stale_at <= locked_at
    assert time.time() - stale_at >= 5
    assert overlap.most == 1  # never a second copy of the verification
    assert len(waiting) <= 1 and len(connections) == 1  # one connection, at most one query waiting on the lock
    failures = [r.getMessage() for r in caplog.records if "verification_full failed" in r.getMessage()]
    assert len(failures) == 1 and "lock wait exceeded lock_timeout=2s" in failures[0], failures
    assert not [r for r in caplog.records if "maximum number of running instances" in r.getMessage()]


@pytest.mark.slow
def test_query_slower_than_its_interval(
    table: str, conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="exporter")
    caplog.set_level(logging.WARNING, logger="apscheduler")
    # The lock wait is allowed 30 s, but the statement only 2.5 s: a run lasts 2.5 intervals, then times out.
    options = {
        "lock_timeout": "30s",
        "checks": {
            "verification_full": "{interval: 1s, statement_timeout: 2500ms}",
            "implementation": "{interval: 1s, statement_timeout: 2500ms}",
            "distribution": "{interval: 1s, statement_timeout: 2500ms}",
        },
    }
    skipped: list[str] = []
    with running(table, **options) as (exporter, server, overlap):
        exporter.scheduler.add_listener(lambda event: skipped.append(event.job_id), EVENT_JOB_MAX_INSTANCES)
        with psycopg.connect(table) as locker:
            locker.execute("LOCK TABLE chunks IN ACCESS EXCLUSIVE MODE")
            poll(lambda: our_lock_waits(conn), "a check waiting on the lock")
            scrapes = _scrape_while(server, conn, 6.0)
            result = poll(
                lambda: (
                    (r := exporter.store.latest("t1", "public.chunks", "verification_full")) and not r.success and r
                ),
                "the verification timed out",
            )
            exporter.scheduler.pause()  # no new runs; the one in flight ends at its statement_timeout
            poll(lambda: exporter.targets["t1"]._lock.acquire(blocking=False), "the last run ended")
            exporter.targets["t1"]._lock.release()
            left = our_backends(conn, "active")
            still_locked = locker.execute(
                "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' "
                "AND relation = 'chunks'::regclass AND granted"
            ).fetchone()
    scrapes.assert_served_without_waiting()
    assert {get(b, "partkey_mismatched_rows", **TT, mode="full") for b in scrapes.bodies} == {3}
    assert result and result.error is not None and "canceled after statement_timeout=2.5s" in result.error
    assert "57014" in result.error
    assert still_locked is not None and still_locked[0] == 1  # the lock was still held ...
    assert left == []  # ... yet no query of ours is left running on the server after the timeout
    assert overlap.most == 1
    # A run outliving its interval is logged once per overrun (a check that overruns again after a run logs
    # again), not once per skipped run.
    overruns = [
        r.getMessage().split()[0] for r in caplog.records if "is still running after its interval" in r.getMessage()
    ]
    job = "t1/public.chunks/verification_full"
    assert 1 <= overruns.count(job) < skipped.count(job), (overruns, skipped)
    assert len(overruns) < len(skipped)
    assert not [r for r in caplog.records if "maximum number of running instances" in r.getMessage()]

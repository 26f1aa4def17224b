"""Run a check on its target's connection with server-side timeouts, and publish the result whole."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import psycopg

from exporter.checks.base import Check, CheckFailedError, Outcome
from exporter.checks.verification import VerificationBusyError
from exporter.introspect import TableNotFoundError
from exporter.pg.errors import failure_line
from exporter.scan_target import SCAN_CHECKS, ScanRoute, read_source
from exporter.snapshot import CheckResult, SnapshotStore
from exporter.target import Target, TargetUnavailableError

log = logging.getLogger(__name__)


class CheckRunner:
    """Wraps one check of one table: timing, timeouts, success metrics and log-once on failure."""

    def __init__(
        self,
        target: Target,
        check: Check,
        store: SnapshotStore,
        interval: float,
        timeout: float,
        scan: ScanRoute | None = None,
    ) -> None:
        self.target = target
        self.check = check
        # The target's scan_dsn (a standby) runs this check when it is one of the heavy scans.
        self.scan = scan if scan is not None and check.name in SCAN_CHECKS else None
        self.server = self.scan.target if self.scan is not None else target  # the connection the check runs on
        self.store = store
        self.interval = interval
        self.timeout = timeout
        self._failing = False

    @property
    def key(self) -> tuple[str, str, str]:
        """(target, table, check), the identity of this runner's series."""
        return (self.target.name, self.check.table.label, self.check.name)

    def run(self) -> CheckResult:
        """Run once and publish; never raises, so the scheduler and the daemon stay up."""
        started = time.monotonic()
        previous = self.store.latest(*self.key)
        outcome: Outcome | None = None
        error: str | None = None
        target_down = False
        try:
            if self.scan is not None:
                outcome = self.scan.run(self._execute)
            else:
                with self.target.session() as conn:
                    outcome = self._execute(conn)
        except TargetUnavailableError as failure:
            error = str(failure)
            target_down = True
        except VerificationBusyError as failure:
            log.info("%s: %s; skipping this run", self._where(), failure)
            if previous is not None:
                return previous
            error = str(failure)
        except TableNotFoundError as failure:
            error = str(failure)
            previous = None  # the table is gone: its series must go too, not linger as stale values
        except CheckFailedError as failure:
            error = str(failure)  # the check said what failed (e.g. the probe's SQLSTATE, message and DETAIL)
        except psycopg.errors.UndefinedTable as failure:
            error = failure_line(failure, self.timeout, self.target.lock_timeout)
            previous = None  # a relation the check reads is gone (the table renamed or dropped): drop its series too
        except psycopg.Error as failure:
            error = failure_line(failure, self.timeout, self.target.lock_timeout)
            # The query broke the connection: that is the target's outage, which the target logs once.
            target_down = self.server.up is False
        except Exception as failure:  # a bug in a check must not take the daemon down
            log.exception("%s: unexpected error", self._where())
            error = f"{type(failure).__name__}: {failure}"
        finished = time.time()
        duration = time.monotonic() - started
        if error is not None:
            error = self.server.scrub(self.target.scrub(error))
        result = CheckResult(
            target=self.target.name,
            table=self.check.table.label,
            check=self.check.name,
            success=error is None,
            duration_seconds=duration,
            finished_at=finished,
            last_success_at=finished if error is None else (previous.last_success_at if previous else None),
            interval_seconds=self.interval,
            error=error,
            payload=outcome.payload if outcome is not None else (previous.payload if previous else None),
            # The replay lag belongs to the payload it was read with: a failed run keeps both from the last success.
            scan=outcome.scan if outcome is not None else (previous.scan if previous else None),
        )
        self._log_transition(error, target_down)
        probe = outcome.probe if outcome is not None else (([], 1) if self.check.name == "insert_probe" else None)
        version = None
        if self.target.server_version and self.target.server_version_text:
            version = (self.target.server_version // 10000, self.target.server_version_text)
        self.store.publish(
            result,
            rows_verified=outcome.rows_verified if outcome is not None else None,
            probe=probe,
            up=self.target.up if self.scan is None else None,  # partkey_up is the primary's connection's
            version=version,
        )
        return result

    def _execute(self, conn: psycopg.Connection[Any]) -> Outcome:
        """One transaction: read-only unless the check writes, under the target's limits and this check's timeout."""
        # A borrowed connection may already be in a transaction: the check then runs in a savepoint of it, under
        # the caller's isolation level (PostgreSQL refuses to set one in a subtransaction).
        top_level = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        if not (self.check.one_snapshot and top_level):
            return self._transaction(conn)
        previous = conn.isolation_level
        # In the BEGIN itself: SET TRANSACTION ISOLATION LEVEL would leave a session-level setting behind on the
        # server connection (pg_settings source "session"). A read-only REPEATABLE READ transaction never fails
        # to serialize, and a standby allows it.
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        try:
            return self._transaction(conn)
        finally:
            if not conn.closed:
                conn.isolation_level = previous

    def _transaction(self, conn: psycopg.Connection[Any]) -> Outcome:
        """The check in its transaction (or savepoint), with the target's limits set first."""
        with conn.transaction() as transaction:
            if self.check.read_write:
                # Explicit, so a database whose default_transaction_read_only is on still lets the probe write.
                conn.execute("SET TRANSACTION READ WRITE")
            self.target.begin_check(conn, statement_timeout=self.timeout, read_only=not self.check.read_write)
            # On the standby, the replay lag is read in the scan's own transaction, just before the scan.
            source = read_source(conn) if self.scan is not None else None
            outcome = self.check.run(conn)
            if self.check.read_write:
                # Whatever a writing check did, none of it may stay behind.
                raise psycopg.Rollback(transaction)
        return outcome if source is None else dataclasses.replace(outcome, scan=source)

    def _where(self) -> str:
        """target/table/check, for log lines."""
        return "/".join(self.key)

    def _log_transition(self, error: str | None, target_down: bool) -> None:
        """Log when a check starts failing and when it recovers, not on every failed run."""
        if error is not None and target_down:
            # The target already logged its outage once (and logs its recovery once); one line per check,
            # failing now and "recovered" later, would repeat it. So the check's own state stays as it was.
            log.debug("%s skipped: %s", self._where(), error)
            return
        if error is not None and not self._failing:
            log.error("%s failed: %s", self._where(), error)
        elif error is None and self._failing:
            log.warning("%s recovered", self._where())
        self._failing = error is not None

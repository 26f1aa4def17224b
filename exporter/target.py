"""One long-lived connection per target, with server-side timeouts, reconnect backoff and an honest up state."""

from __future__ import annotations

import contextlib
import logging
import select
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from exporter.pg.connect import connect, explain
from exporter.pg.limits import set_local_limits
from exporter.pg.scrub import dsn_password, scrub
from exporter.slots import ConnectionSlots, SlotTimeoutError

log = logging.getLogger(__name__)

APPLICATION_NAME = "partkey-exporter"
MAX_BACKOFF_SECONDS = 60.0
# A check's transaction left open (a stuck client thread) ends on the server after this long.
IDLE_IN_TRANSACTION_SECONDS = 60.0


def connection_dropped(conn: psycopg.Connection[Any]) -> bool:
    """Has the server closed this idle connection (a restart, a terminated backend)? Never sends a query."""
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return True
    if not readable:
        return False
    # An idle connection gets data only when the server ends it (or sends a notice): a no-op round trip tells.
    try:
        conn.execute("SELECT 1")
    except psycopg.Error:
        return True
    return False


class TargetUnavailableError(Exception):
    """The target cannot be reached now; the message says why and when we try again."""


class Target:
    """A database we watch: its connection is shared by all its checks, one query at a time."""

    def __init__(
        self,
        name: str,
        dsn: str,
        *,
        connect_timeout: float = 5.0,
        lock_timeout: float = 1.0,
        slots: ConnectionSlots | None = None,
    ) -> None:
        self.name = name
        self._slots = slots  # the global max_connections cap, when configured
        self._dsn = dsn
        self._secrets = [s for s in [dsn_password(dsn)] if s]
        self.connect_timeout = connect_timeout
        self.lock_timeout = lock_timeout
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._closed = False
        self._failures = 0
        self._next_attempt = 0.0
        self.up: bool | None = None
        self.last_error: str | None = None
        self.server_version: int | None = None
        self.server_version_text: str | None = None
        self.recoveries = 0  # times the target came back after an outage; the reconnect watcher reacts to it
        self.down_since: float | None = None  # wall time of the first failure of the current outage

    def scrub(self, text: str) -> str:
        """Remove this target's password from a message."""
        return scrub(text, self._secrets)

    def _connect(self) -> psycopg.Connection[Any]:
        """Open the connection; read-only mode and the timeouts are set per transaction (begin_check)."""
        conn = connect(
            self._dsn, application_name=APPLICATION_NAME, connect_timeout=self.connect_timeout, keepalives=True
        )
        self.server_version = conn.info.server_version
        row = conn.execute("SHOW server_version").fetchone()
        self.server_version_text = str(row[0]).split()[0] if row else None
        return conn

    def begin_check(self, conn: psycopg.Connection[Any], *, statement_timeout: float, read_only: bool = True) -> None:
        """The first statement of every check's transaction: READ ONLY and this target's limits, for it alone.

        Transaction-local, so nothing outlives the transaction on a server connection a pool hands to others.
        """
        set_local_limits(
            conn,
            lock_timeout=self.lock_timeout,
            statement_timeout=statement_timeout,
            idle_in_transaction_timeout=IDLE_IN_TRANSACTION_SECONDS,
            read_only=read_only,
        )

    def _mark_down(self, error: BaseException) -> None:
        """Record a failure, schedule the next attempt, and log only on the change of state."""
        self._failures += 1
        delay = min(MAX_BACKOFF_SECONDS, 2.0 ** (self._failures - 1))
        self._next_attempt = time.monotonic() + delay
        message = explain(
            self.scrub(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
        )
        if self.up is not False:
            self.down_since = time.time()
            log.error(
                "target %s is down: %s (retrying with backoff up to %.0fs)", self.name, message, MAX_BACKOFF_SECONDS
            )
        else:
            log.debug("target %s still down: %s (next attempt in %.0fs)", self.name, message, delay)
        self.up = False
        self.last_error = message

    def _mark_up(self) -> None:
        """Record that the connection works again."""
        if self.up is False:
            log.warning("target %s is back up after %d failed attempts", self.name, self._failures)
            self.recoveries += 1
        self.up = True
        self._failures = 0
        self.last_error = None

    @contextmanager
    def session(self, blocking: bool = True) -> Iterator[psycopg.Connection[Any]]:
        """Lend the connection to one check at a time; reconnect when it broke, with backoff."""
        acquired = self._lock.acquire(blocking=blocking)
        if not acquired:
            raise TargetUnavailableError(f"target {self.name} is busy")
        if self._closed:
            # Checks queued behind a stuck one must not reconnect after shutdown or reload closed the target.
            self._lock.release()
            raise TargetUnavailableError(f"target {self.name} is closed")
        try:
            conn = self._ensure_connection()
            try:
                yield conn
            except BaseException as error:
                # A failed query on a healthy connection (timeout, privilege) is not an outage.
                if conn.closed or conn.broken:
                    self._drop_connection()
                    self._mark_down(error)
                else:
                    self._mark_up()
                raise
            else:
                self._mark_up()
            if self._slots is not None and self._slots.waiting():
                self._drop_connection()  # others queue for a slot under max_connections: give this one back
        finally:
            self._lock.release()

    def _ensure_connection(self) -> psycopg.Connection[Any]:
        """The open connection, or a new one; raise TargetUnavailableError while backing off."""
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        self._drop_connection()
        wait = self._next_attempt - time.monotonic()
        if wait > 0:
            raise TargetUnavailableError(f"target {self.name} is down: {self.last_error} (next attempt in {wait:.0f}s)")
        if self._slots is not None:
            try:
                self._slots.acquire(self.name, self._give_back)
            except SlotTimeoutError as error:  # the cap is busy: not an outage of this target
                raise TargetUnavailableError(f"target {self.name}: {error}") from None
        try:
            self._conn = self._connect()
        except psycopg.Error as error:
            self._release_slot()
            self._mark_down(error)
            raise TargetUnavailableError(f"target {self.name} is down: {self.last_error}") from None
        return self._conn

    def _give_back(self) -> bool:
        """Close an idle connection so that a queued target gets its slot; False when a check is using it."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            held = self._slots is not None and self._slots.holds(self.name)
            self._drop_connection()
            return held
        finally:
            self._lock.release()

    def _release_slot(self) -> None:
        """Return this target's connection slot, if it holds one."""
        if self._slots is not None:
            self._slots.release(self.name)

    def watch(self) -> None:
        """Between checks: notice a dead idle connection, or reconnect a down target now (the reconnect watcher)."""
        if not self._lock.acquire(blocking=False):
            return  # a check holds the connection: it sees any failure itself
        try:
            if self._closed:
                return
            if self._conn is not None and not self._conn.closed and not self._conn.broken:
                if connection_dropped(self._conn):
                    self._drop_connection()
                    self._mark_down(psycopg.OperationalError("the server closed the idle connection"))
                return
            if self.up is False:
                # No backoff here: one attempt per watcher round, whatever the checks' backoff says, so that the
                # first check after a restart finds the connection open.
                if self._slots is not None and not self._slots.try_acquire(self.name, self._give_back):
                    return  # under max_connections the next check queues for a slot and reconnects itself
                try:
                    self._conn = self._connect()
                except psycopg.Error as error:
                    self._release_slot()
                    log.debug("target %s: reconnect attempt failed: %s", self.name, self.scrub(str(error).strip()))
                    return
                self._mark_up()
        finally:
            self._lock.release()

    def _drop_connection(self) -> None:
        """Close the connection (no longer usable, or its slot is wanted) and return its slot."""
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
        self._release_slot()

    def close(self, grace: float = 1.0) -> None:
        """Close the connection for good (on shutdown or reload), canceling a query still running on the server."""
        self._closed = True
        acquired = self._lock.acquire(timeout=grace)
        if not acquired:
            # A check is stuck (on a lock, say): cancel its query on the server rather than wait for its timeout.
            conn = self._conn
            if conn is not None and not conn.closed:
                with contextlib.suppress(Exception):
                    conn.cancel()
            acquired = self._lock.acquire(timeout=3 * grace)
        if not acquired:
            log.warning(
                "target %s: a check is still running at shutdown; its connection closes with the process", self.name
            )
            return
        try:
            self._drop_connection()
        finally:
            self._lock.release()

    @property
    def closed(self) -> bool:
        """Has close() been called (shutdown, or a reload removed or replaced the target)?"""
        return self._closed

    @property
    def backend_pid(self) -> int | None:
        """The server pid of our connection, for tests and diagnostics."""
        conn = self._conn
        return conn.info.backend_pid if conn is not None and not conn.closed else None

"""Heavy scans on a hot standby (scan_dsn): which checks go there, the replay lag read with them, conflict retries."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from exporter.checks.base import CheckFailedError, Outcome
from exporter.pg.retry import Backoff, retry
from exporter.pg.scrub import first_line
from exporter.target import Target

log = logging.getLogger(__name__)

# The checks that read every row (or a share of the pages); the catalog reads, the incremental verification (cheap,
# and its watermark must follow the primary) and the insert probe (it writes) stay on the primary.
SCAN_CHECKS = frozenset({"verification_full", "verification_sample", "distribution_exact"})
CONFLICT_ATTEMPTS = 3  # a scan canceled by a recovery conflict runs at most this many times per scheduled run
CONFLICT_BACKOFF_SECONDS = 1.0  # before the second attempt; doubled before the third
SQLSTATE_RECOVERY_CONFLICT = "40001"

# Read first in the scan's own transaction, before the scan: the scan's snapshot is at least this fresh.
# On a primary both replay functions return NULL.
_SOURCE_SQL = """
SELECT pg_is_in_recovery(),
       extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8,
       pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::float8
"""


@dataclass(frozen=True)
class ScanSource:
    """Where a heavy scan ran, and how far behind the primary the standby's replay was when it started."""

    in_recovery: bool
    # now() - pg_last_xact_replay_timestamp(): the scan saw every transaction the primary committed up to this long
    # before it started. An upper bound: it grows on an idle primary too, as no commit is left to replay.
    replay_lag_seconds: float | None
    # WAL received from the primary but not replayed yet (0 on an idle, caught-up standby).
    replay_lag_bytes: int | None
    conflict_retries: int = 0  # attempts canceled by a recovery conflict before this one succeeded

    def describe(self) -> str:
        """One line for the report."""
        if not self.in_recovery:
            text = "scan_dsn, which is NOT a standby (pg_is_in_recovery() is false)"
        else:
            seconds = "unknown" if self.replay_lag_seconds is None else f"{self.replay_lag_seconds:.1f}s"
            behind = "unknown" if self.replay_lag_bytes is None else f"{self.replay_lag_bytes:,} bytes"
            text = f"standby (replay lag {seconds}, {behind} received but not replayed)"
        if self.conflict_retries:
            plural = "y" if self.conflict_retries == 1 else "ies"
            text += f", after {self.conflict_retries} retr{plural} on a recovery conflict"
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return dataclasses.asdict(self)


class RecoveryConflictError(CheckFailedError):
    """Every attempt of a scan was canceled by a recovery conflict on the standby."""


def read_source(conn: psycopg.Connection[Any]) -> ScanSource:
    """Is this server in recovery, and how far is its replay behind (read in the scan's transaction)."""
    row = conn.execute(_SOURCE_SQL).fetchone()
    assert row is not None
    in_recovery, seconds, lag_bytes = row
    return ScanSource(
        in_recovery=bool(in_recovery),
        # Clocks of two machines can disagree by a little: a negative age means "caught up", never "ahead".
        replay_lag_seconds=None if seconds is None else max(0.0, float(seconds)),
        replay_lag_bytes=None if lag_bytes is None else max(0, int(lag_bytes)),
    )


def is_recovery_conflict(error: BaseException) -> bool:
    """Did the standby cancel the statement (or end the session) because replay needed what it read?"""
    if not isinstance(error, psycopg.Error):
        return False
    return error.sqlstate == SQLSTATE_RECOVERY_CONFLICT or "conflict with recovery" in str(error)


class ScanRoute:
    """The connection to a target's scan_dsn, and the rules for running heavy scans there."""

    def __init__(
        self,
        target: Target,
        *,
        attempts: int = CONFLICT_ATTEMPTS,
        backoff: float = CONFLICT_BACKOFF_SECONDS,
    ) -> None:
        self.target = target
        self.attempts = attempts
        self.backoff = backoff
        self._warned_not_standby = False

    def run(self, execute: Callable[[psycopg.Connection[Any]], Outcome]) -> Outcome:
        """execute(conn) on the standby; retried when a recovery conflict cancels it. Never runs on the primary."""
        conflicts: list[str] = []
        states: list[str] = []

        def attempt() -> Outcome:
            self._refresh()
            with self.target.session() as conn:
                return execute(conn)

        def failed(number: int, error: Exception, pause: float | None) -> None:
            conflicts.append(self.target.scrub(first_line(str(error))))
            if isinstance(error, psycopg.Error) and error.sqlstate:
                states.append(error.sqlstate)
            log.info(
                "%s: a recovery conflict canceled the scan (attempt %d of %d): %s",
                self.target.name,
                number,
                self.attempts,
                conflicts[-1],
            )

        # The standby must replay past the conflict; after a FATAL one the target also backs off ~1 s.
        backoff = Backoff(self.attempts, self.backoff, math.inf, jitter=False)
        try:
            outcome = retry(attempt, is_recovery_conflict, backoff, failed)
        except psycopg.Error as error:
            if not is_recovery_conflict(error):
                raise
            state = states[-1] if states else SQLSTATE_RECOVERY_CONFLICT
            raise RecoveryConflictError(
                f"canceled by a recovery conflict on the standby {len(conflicts)} times in a row "
                f"(SQLSTATE {state}: {conflicts[-1]}): replay removed row versions or took locks the scan still "
                "needed; on the standby, raise max_standby_streaming_delay or turn on hot_standby_feedback"
            ) from None
        source = outcome.scan
        if source is None:
            return outcome
        self._note_standby(source)
        return dataclasses.replace(outcome, scan=dataclasses.replace(source, conflict_retries=len(conflicts)))

    def _refresh(self) -> None:
        """Before an attempt: notice a connection the standby closed since the last scan, and reconnect at once.

        The reconnect watcher looks after the primaries only. A scan runs hours apart, and the standby may have
        restarted (or ended the session on a conflict) meanwhile: without this, that run would fail first.
        """
        self.target.watch()  # a closed idle connection: marked down
        if self.target.up is False:
            self.target.watch()  # one connection attempt now, whatever the backoff says

    def _note_standby(self, source: ScanSource) -> None:
        """Warn once when scan_dsn is not a standby (the scans still run there), and once when it is again."""
        if not source.in_recovery and not self._warned_not_standby:
            self._warned_not_standby = True
            log.warning(
                "%s is not a standby (pg_is_in_recovery() is false): the heavy scans run there anyway, "
                "and no replay lag is exported",
                self.target.name,
            )
        elif source.in_recovery and self._warned_not_standby:
            self._warned_not_standby = False
            log.warning("%s is a standby again", self.target.name)

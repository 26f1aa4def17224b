"""PartitionImplementationDetector: the daemon's own checks, embedded in an application (sync or asyncio).

Nothing here re-implements a check. The detector builds the daemon's check objects for one table
(`exporter.checks.registry.checks_for`), runs each through the daemon's `CheckRunner` (server-side statement_timeout,
lock_timeout, error descriptions, password scrubbing) into its own `SnapshotStore`, and reads the results back as a
`TableHealth`, so `generate_health_report()` is `/report` rendered from the same kind of data. It also implements
`exporter.admin.HealthSource`, which lets a web framework reuse the daemon's admin API (token check, body parsing,
status codes) unchanged: see examples/fastapi/.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, TypeVar, get_args

import psycopg
from psycopg import pq

from exporter.admin import BusyError, UnknownTableError, report_text
from exporter.checks.base import Check
from exporter.checks.registry import REGISTRY, checks_for
from exporter.checks.runner import CheckRunner
from exporter.checks.verification import TableVerificationState, VerificationCheck
from exporter.config import ChecksConfig, TableConfig
from exporter.introspect import Implementation
from exporter.keyspec import KeyFormula
from exporter.partition_stats import Distribution
from exporter.report import TableHealth
from exporter.snapshot import CheckResult, SnapshotStore
from exporter.target import Target
from exporter.verify import Mode, VerificationResult

__all__ = [
    "REPORT_CHECKS",
    "AsyncPartitionImplementationDetector",
    "BusyError",
    "CheckFailedError",
    "PartitionImplementationDetector",
]

# The checks behind the health report: the same set `partkey-exporter report` runs once.
REPORT_CHECKS: tuple[str, ...] = tuple(kind.name for kind in REGISTRY if kind.in_report)

_Payload = TypeVar("_Payload")
# Settings from_env() reads, each from PREFIX + the name in upper case (pydantic converts the modulus).
_ENV_OPTIONS = ("dsn", "table", "schema", "key_column", "source_column", "modulus", "key_expression", "admin_token")


class CheckFailedError(RuntimeError):
    """A check could not run; `.result` is the daemon's CheckResult, with the error the report would show."""

    def __init__(self, result: CheckResult) -> None:
        super().__init__(f"{result.check} of {result.table} failed: {result.error}")
        self.result = result


class _BorrowedTarget(Target):
    """A Target that lends the application's own connection: never closed here, never reconfigured for good."""

    def __init__(self, name: str, conn: psycopg.Connection[Any], *, lock_timeout: float) -> None:
        super().__init__(name, "", lock_timeout=lock_timeout)
        self._borrowed = conn

    def _connect(self) -> psycopg.Connection[Any]:
        """The application's connection; no query, so a non-autocommit connection stays idle."""
        if self._borrowed.closed or self._borrowed.broken:
            raise psycopg.OperationalError("the application's connection is closed")
        self.server_version = self._borrowed.info.server_version
        text = self._borrowed.info.parameter_status("server_version")
        self.server_version_text = text.split()[0] if text else None
        return self._borrowed

    def _drop_connection(self) -> None:
        """Forget the connection; closing it is the application's business."""
        self._conn = None

    @contextmanager
    def session(self, blocking: bool = True) -> Iterator[psycopg.Connection[Any]]:
        """The connection inside our own read-only transaction, whose limits end with it."""
        with super().session(blocking) as conn:
            if conn.info.transaction_status != pq.TransactionStatus.IDLE:
                # Our transaction-local timeouts would leak into the application's transaction.
                raise psycopg.ProgrammingError("the application's connection is inside a transaction; commit first")
            # Our queries are never prepared on the application's connection either: behind a transaction pool a
            # prepared statement stays on a server connection the next transaction may not get (or another client
            # gets). The application's own setting is back when we are done.
            threshold = conn.prepare_threshold
            conn.prepare_threshold = None
            try:
                with conn.transaction():
                    conn.execute("SET TRANSACTION READ ONLY")
                    # The runner's own transaction becomes a savepoint in this one; its limits (begin_check) are
                    # transaction-local, so they end with this transaction.
                    yield conn
            finally:
                conn.prepare_threshold = threshold


class PartitionImplementationDetector:
    """One table's partition-key health, from the daemon's checks, for code that embeds them.

    `conn_or_dsn` is a psycopg 3 connection or a DSN. A connection is borrowed, never closed, and must be idle
    (not inside a transaction) when a method runs; each check runs in its own short READ ONLY transaction with
    transaction-local statement_timeout and lock_timeout, so the connection's settings are left as they were.
    A DSN opens one long-lived connection on first use (read-only, `application_name=partkey-exporter`, reconnect
    with backoff, like the daemon's); `close()` or the `with` block closes it. Methods are thread-safe: calls share
    the connection one at a time, and only one verification of the table runs at once (a second raises BusyError).
    """

    def __init__(
        self,
        conn_or_dsn: psycopg.Connection[Any] | str,
        table: str = "chunks",
        key_column: str = "partition_key",
        source_column: str = "collection_id",
        modulus: int = 100,
        *,
        schema: str = "public",
        key_expression: KeyFormula = "safe",
        monotonic_column: str | None = None,
        examples_limit: int = 10,
        checks: ChecksConfig | None = None,
        target: str = "embedded",
        connect_timeout: float = 5.0,
        lock_timeout: float = 1.0,
        admin_token: str | None = None,
        cache_seconds: float = 60.0,
    ) -> None:
        # Validated by the daemon's own config model: a bad modulus or name fails here, with pydantic's message.
        self.table_config = TableConfig.model_validate(
            {
                "table": table,
                "schema": schema,
                "key_column": key_column,
                "source_column": source_column,
                "modulus": modulus,
                "key_expression": key_expression,
                "monotonic_column": monotonic_column,
                "examples_limit": examples_limit,
                "checks": checks or ChecksConfig(),
            }
        )
        self.target_name = target
        self.admin_token = admin_token
        self.cache_seconds = cache_seconds
        self.target: Target
        if isinstance(conn_or_dsn, str):
            self.target = Target(target, conn_or_dsn, connect_timeout=connect_timeout, lock_timeout=lock_timeout)
        elif isinstance(conn_or_dsn, psycopg.Connection):
            self.target = _BorrowedTarget(target, conn_or_dsn, lock_timeout=lock_timeout)
        else:
            raise TypeError(
                f"expected a psycopg.Connection or a DSN string, got {type(conn_or_dsn).__name__}"
                " (for asyncio, give AsyncPartitionImplementationDetector a DSN)"
            )
        self.store = SnapshotStore()
        self._verification = TableVerificationState()  # one run at a time, and the incremental watermark
        self._refresh_lock = threading.Lock()
        self.runners: dict[str, CheckRunner] = {
            check.name: self._runner(check, settings.interval, settings.statement_timeout)
            # The insert probe writes rows: its READ WRITE transaction has no place in here.
            for check, settings in checks_for(self.table_config, self._verification, read_only=True)
        }
        self._limited: dict[tuple[Mode, int], CheckRunner] = {}

    @classmethod
    def from_env(cls, prefix: str = "PARTKEY_", **options: Any) -> PartitionImplementationDetector:
        """A detector from PARTKEY_DSN and, when set, PARTKEY_TABLE, _SCHEMA, _MODULUS and the rest of _ENV_OPTIONS."""
        env = {name: os.environ.get(prefix + name.upper()) for name in _ENV_OPTIONS}
        dsn = env.pop("dsn")
        if not dsn:
            raise ValueError(f"set {prefix}DSN to the database's connection string")
        given = {name: value for name, value in env.items() if value}
        return cls(dsn, **{**given, **options})

    def _runner(self, check: Check, interval: float, timeout: float) -> CheckRunner:
        """A daemon CheckRunner for one check on this detector's target and store."""
        return CheckRunner(self.target, check, self.store, interval, timeout)

    @property
    def label(self) -> str:
        """schema.table, as in the daemon's reports and metric labels."""
        return self.table_config.label

    # The plan's four methods.

    def detect_implementation(self) -> Implementation:
        """How the key is maintained (method, PG version, shape, overflow), and whether that is optimal and why."""
        return _payload(self._run("implementation"), Implementation)

    def verify_partition_keys(self, mode: Mode = "full", limit: int | None = None) -> VerificationResult:
        """Rows checked, wrong, NULL and unevaluable keys, and up to `limit` example bad rows (default examples_limit).

        Raises BusyError when a verification of this table is already running. `incremental` needs
        `monotonic_column`; its first call only sets the watermark, later calls check the rows added since and
        report the bad rows found since the first call, as the daemon does.
        """
        return _payload(self._verify(mode, limit), VerificationResult)

    def get_performance_metrics(self, exact: bool = False) -> Distribution:
        """Rows per partition and the skew figures; `.source` says "estimate" (catalog only) or "exact" (a scan)."""
        return _payload(self._run("distribution_exact" if exact else "distribution"), Distribution)

    def generate_health_report(self) -> str:
        """The text of the daemon's /report, after running the report's checks now."""
        self.refresh(REPORT_CHECKS)
        return report_text(self._healths())

    # What the daemon's scheduler and the admin API do, for this one table.

    def refresh(
        self, checks: Iterable[str] = REPORT_CHECKS, max_age: float = 0.0, wait: bool = True
    ) -> list[CheckResult]:
        """Run the named checks whose last success is older than max_age seconds; return the new results.

        With wait=False, a refresh already running elsewhere is not waited for: nothing runs and [] comes back.
        """
        if not self._refresh_lock.acquire(blocking=wait):
            return []
        try:
            results = []
            for name in checks:
                runner = self.runners.get(name)
                if runner is None:
                    continue  # disabled in `checks`
                latest = self.store.latest(self.target_name, self.label, name)
                if max_age > 0 and latest is not None and latest.success and time.time() - latest.finished_at < max_age:
                    continue
                results.append(runner.run())
            return results
        finally:
            self._refresh_lock.release()

    def health(self, target: str | None = None, table: str | None = None) -> list[TableHealth]:
        """HealthSource: this table's health, re-running the report's checks older than cache_seconds.

        While another caller's refresh runs (a long full verification, say), this serves the latest results at
        once, as the daemon serves its snapshot; only the very first call, with nothing to serve, waits.
        """
        self._select(target, table)
        self.refresh(REPORT_CHECKS, max_age=self.cache_seconds, wait=not self.store.current.results)
        return self._healths()

    def verify_now(self, target: str | None, table: str | None, mode: Mode) -> CheckResult:
        """HealthSource: a verification now, as POST /admin/partition/verify runs it."""
        if target not in (None, self.target_name) or table not in (None, self.label):
            raise UnknownTableError(f"unknown target/table {target or '*'}/{table or '*'}")  # the daemon's words
        try:
            return self._verify(mode, None)
        except ValueError as error:
            raise UnknownTableError(str(error)) from None

    def close(self) -> None:
        """Close the connection opened from a DSN (a borrowed one stays open); later calls raise CheckFailedError."""
        self.target.close()

    def __enter__(self) -> PartitionImplementationDetector:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # Internals.

    def _run(self, name: str) -> CheckResult:
        """Run one configured check now."""
        runner = self.runners.get(name)
        if runner is None:
            raise ValueError(f"check {name} is disabled for {self.label}")
        return runner.run()

    def _verify(self, mode: Mode, limit: int | None) -> CheckResult:
        """One verification at a time per table: a second one is refused, as the daemon's POST gets 409."""
        runner = self._verification_runner(mode, limit)
        if not self._verification.lock.acquire(blocking=False):
            raise BusyError(f"a verification of {self.label} on {self.target_name} is already running")
        try:
            return runner.run()
        finally:
            self._verification.lock.release()

    def _verification_runner(self, mode: Mode, limit: int | None) -> CheckRunner:
        """The configured runner of this mode, or one keeping `limit` examples (sharing the watermark)."""
        if mode not in get_args(Mode):
            raise ValueError(f"mode must be full, sample or incremental, got {mode!r}")
        name = f"verification_{mode}"
        if mode == "incremental" and self.table_config.monotonic_column is None:
            raise ValueError(f"{self.label} has no monotonic_column: incremental mode is unavailable")
        runner = self.runners.get(name)
        if runner is None:
            raise ValueError(f"check {name} is disabled for {self.label}")
        if limit is None or limit == self.table_config.examples_limit:
            return runner
        if not 0 <= limit <= 1000:
            raise ValueError(f"limit must be between 0 and 1000, got {limit}")
        if (mode, limit) not in self._limited:
            table = self.table_config.model_copy(update={"examples_limit": limit})
            self._limited[(mode, limit)] = self._runner(
                VerificationCheck(table, mode, self._verification), runner.interval, runner.timeout
            )
        return self._limited[(mode, limit)]

    def _select(self, target: str | None, table: str | None) -> None:
        """Refuse names other than this detector's, as the daemon does for unconfigured ones."""
        if target is not None and target != self.target_name:
            raise UnknownTableError(f"unknown target {target!r}")
        if table is not None and table != self.label:
            raise UnknownTableError(f"unknown table {table!r}")

    def _healths(self) -> list[TableHealth]:
        """The table's health from the latest results, built exactly as the daemon builds it."""
        snapshot = self.store.current
        results = {c: r for (t, tb, c), r in snapshot.results.items() if t == self.target_name and tb == self.label}
        up = bool(snapshot.target_up.get(self.target_name))
        return [TableHealth(target=self.target_name, table=self.label, target_up=up, results=results)]


def _payload(result: CheckResult, kind: type[_Payload]) -> _Payload:
    """The fresh payload of a successful run; a failed run raises, never returning the previous, stale one."""
    if not result.success or not isinstance(result.payload, kind):
        raise CheckFailedError(result)
    return result.payload


class AsyncPartitionImplementationDetector:
    """The same detector for asyncio: each call runs the sync implementation in a worker thread.

    The event loop never waits on the database. Takes exactly PartitionImplementationDetector's arguments, with a
    DSN or a sync psycopg connection; `.sync` is the detector underneath (a HealthSource).
    """

    def __init__(self, *args: Any, **options: Any) -> None:
        given = args[0] if args else options.get("conn_or_dsn")
        if isinstance(given, psycopg.AsyncConnection):
            raise TypeError("an AsyncConnection cannot be shared with a worker thread: give a DSN instead")
        self.sync = PartitionImplementationDetector(*args, **options)

    async def detect_implementation(self) -> Implementation:
        """See PartitionImplementationDetector.detect_implementation."""
        return await asyncio.to_thread(self.sync.detect_implementation)

    async def verify_partition_keys(self, mode: Mode = "full", limit: int | None = None) -> VerificationResult:
        """See PartitionImplementationDetector.verify_partition_keys."""
        return await asyncio.to_thread(self.sync.verify_partition_keys, mode, limit)

    async def get_performance_metrics(self, exact: bool = False) -> Distribution:
        """See PartitionImplementationDetector.get_performance_metrics."""
        return await asyncio.to_thread(self.sync.get_performance_metrics, exact)

    async def generate_health_report(self) -> str:
        """See PartitionImplementationDetector.generate_health_report."""
        return await asyncio.to_thread(self.sync.generate_health_report)

    async def close(self) -> None:
        """Close the DSN's connection (in a thread: a close may wait for a running check)."""
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> AsyncPartitionImplementationDetector:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
